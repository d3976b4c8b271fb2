# -*- coding: utf-8 -*-
# Copyright (c) tradeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    # The Kubernetes backend's options (modelled on kubernetes.core's k8s_auth_options). Keep in sync
    # with ARGSPEC in plugins/module_utils/_kubernetes.py; tests/unit/plugins/test_doc_fragments.py
    # compares them, and checks the copies that `make docs` writes into the modules.
    DOCUMENTATION = r"""
options:
  namespace:
    description: The namespace. Default V(default).
    type: str
  kubeconfig:
    description: Path of a kubeconfig file, used when no API URL is given. Default C(~/.kube/config).
    type: path
  context:
    description: The kubeconfig context to use. Default the kubeconfig's current context.
    type: str
  api_url:
    description: The Kubernetes API URL, for example C(https://k8s.example:6443). It takes precedence over the kubeconfig.
    type: str
  api_key:
    description: A bearer token for the API URL. Keep it in Ansible Vault; it is never returned or logged.
    type: str
  validate_certs:
    description: Validate the API server's TLS certificate. Default V(true).
    type: bool
"""

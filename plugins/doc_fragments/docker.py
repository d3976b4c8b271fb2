# -*- coding: utf-8 -*-
# Copyright (c) tradeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    # The Docker backend's options (modelled on community.docker's docker fragment). Keep in sync with
    # ARGSPEC in plugins/module_utils/_docker.py; tests/unit/plugins/test_doc_fragments.py compares them,
    # and checks the copies that `make docs` writes into the modules.
    DOCUMENTATION = r"""
options:
  container:
    description: The container's name or id.
    type: str
  docker_host:
    description: The Docker daemon's API URL. Default V(unix:///var/run/docker.sock).
    type: str
"""

# -*- coding: utf-8 -*-
# Copyright (c) tradeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One place to build a Kubernetes API client, from an API URL + token or a kubeconfig.

The ``kubernetes`` library is imported lazily, so that modules that never talk to Kubernetes
do not need it. Errors come out as :class:`BackendError` / :class:`MissingLibraryError`.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.tradeops.remediation.plugins.module_utils._errors import BackendError, MissingLibraryError


def api_client(api_url=None, api_key=None, validate_certs=True, kubeconfig=None, context=None,
               purpose="the kubernetes backend"):
    """The ``kubernetes`` client module and an ApiClient (close it when done)."""
    try:
        from kubernetes import client, config
    except ImportError:
        raise MissingLibraryError("kubernetes", purpose)
    if api_url:
        conf = client.Configuration()
        conf.host = api_url
        conf.verify_ssl = validate_certs
        if api_key:
            conf.api_key = {"authorization": "Bearer " + api_key}
        return client, client.ApiClient(conf)
    try:
        return client, config.new_client_from_config(config_file=kubeconfig, context=context)
    except Exception as err:  # noqa: BLE001 - kubeconfig errors come in many types
        raise BackendError("cannot load kubeconfig: %s" % err)


def core_v1_api(api_url=None, api_key=None, validate_certs=True, kubeconfig=None, context=None,
                purpose="the kubernetes backend"):
    """A CoreV1Api and its ApiClient (close it)."""
    client, api = api_client(api_url, api_key, validate_certs, kubeconfig, context, purpose)
    return client.CoreV1Api(api), api


def apps_v1_api(api_url=None, api_key=None, validate_certs=True, kubeconfig=None, context=None,
                purpose="the kubernetes backend"):
    """An AppsV1Api and its ApiClient (close it)."""
    client, api = api_client(api_url, api_key, validate_certs, kubeconfig, context, purpose)
    return client.AppsV1Api(api), api


def api_error(err):
    """A short, secret-free description of a kubernetes client error: the status and reason only.

    Never the response body: a Secret's API answers can carry its data.
    """
    status = getattr(err, "status", None)
    reason = getattr(err, "reason", None) or type(err).__name__
    return "%s%s" % (("HTTP %s " % status) if status else "", reason)

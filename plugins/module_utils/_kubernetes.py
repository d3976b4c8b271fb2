# -*- coding: utf-8 -*-
# Copyright (c) tradeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The Kubernetes backend: its auth options, their validation, its API client and its errors, written once.

Used by the kubernetes kill-switch method of ``halt_trading``, the kubernetes probe of
``health_check`` and the kubernetes store of ``rotate_secret``. Modelled on kubernetes.core's
``args_common.py`` (``AUTH_ARG_SPEC``) and ``k8s/client.py``: a module composes its argument spec
from :data:`ARGSPEC` (documented in the ``tradeops.remediation.kubernetes`` doc fragment; a
unit test keeps the two in sync), validates it with :func:`kubernetes_options`, and calls the API
through :func:`call`, which builds the client from an API URL + token or a kubeconfig, passes the
caller's deadline as the request timeout, maps every client error to :class:`BackendError` (status
and reason only, never a response body: a Secret's answers carry its data) and closes the client.
The ``kubernetes`` library is imported lazily.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.tradeops.remediation.plugins.module_utils._errors import (
    BackendError,
    MissingLibraryError,
    TradeopsError,
)
from ansible_collections.tradeops.remediation.plugins.module_utils._http import check_url
from ansible_collections.tradeops.remediation.plugins.module_utils._validate import Record, compose, join, missing

DEFAULT_NAMESPACE = "default"

# Keep in sync with plugins/doc_fragments/kubernetes.py (tests/unit/plugins/test_doc_fragments.py).
ARGSPEC = dict(
    kubeconfig=dict(type="path"),
    context=dict(type="str"),
    api_url=dict(type="str"),
    api_key=dict(type="str", no_log=True),
    validate_certs=dict(type="bool"),
    namespace=dict(type="str"),
)


def argspec(**extra):
    """A fresh copy of :data:`ARGSPEC` plus ``extra``."""
    return compose(ARGSPEC, extra)


class KubernetesOptions(Record):
    """The validated connection options of one Kubernetes API and the namespace to work in
    (:func:`kubernetes_options` builds it)."""

    __slots__ = ("api_url", "api_key", "validate_certs", "kubeconfig", "context", "namespace")
    DEFAULTS = {"validate_certs": True, "namespace": DEFAULT_NAMESPACE}

    def lock_key(self):
        """Which API this is, for locks shared by calls to the same cluster."""
        return (self.api_url or self.kubeconfig, self.context)


def kubernetes_options(spec, where=""):
    """Validate and normalise the auth options of ``spec``; messages name ``where.option``."""
    api_url = None if missing(spec.get("api_url")) else spec["api_url"]
    if api_url is not None:
        check_url(api_url, join(where, "api_url"))
    return KubernetesOptions(
        api_url=api_url,
        api_key=None if missing(spec.get("api_key")) else spec["api_key"],
        validate_certs=spec.get("validate_certs") is not False,
        kubeconfig=None if missing(spec.get("kubeconfig")) else spec["kubeconfig"],
        context=None if missing(spec.get("context")) else spec["context"],
        namespace=spec.get("namespace") or DEFAULT_NAMESPACE,
    )


def api_client(options, purpose="the kubernetes backend"):
    """The ``kubernetes`` client module and an ApiClient for ``options`` (close it when done)."""
    try:
        from kubernetes import client, config
    except ImportError:
        raise MissingLibraryError("kubernetes", purpose)
    if options.api_url:
        conf = client.Configuration()
        conf.host = options.api_url
        conf.verify_ssl = options.validate_certs
        if options.api_key:
            conf.api_key = {"authorization": "Bearer " + options.api_key}
        return client, client.ApiClient(conf)
    try:
        return client, config.new_client_from_config(config_file=options.kubeconfig, context=options.context)
    except Exception as err:  # noqa: BLE001 - kubeconfig errors come in many types
        raise BackendError("cannot load kubeconfig: %s" % err)


def api_error(err):
    """A short, secret-free description of a kubernetes client error: the status and reason only.

    Never the response body: a Secret's API answers can carry its data.
    """
    status = getattr(err, "status", None)
    reason = getattr(err, "reason", None) or (str(err).splitlines() or [type(err).__name__])[0]
    return "%s%s" % (("HTTP %s " % status) if status else "", reason)


def call(options, deadline, fn, what, api="apps", purpose="the kubernetes backend", on_status=None):
    """``fn(api, timeout)`` with an AppsV1Api (``api="apps"``) or CoreV1Api (``"core"``).

    ``timeout`` is what is left of ``deadline``, to pass as ``_request_timeout``. A client error
    becomes ``BackendError("<what>: HTTP <status> <reason>")``, or the exception that
    ``on_status[status](err)`` returns for the statuses a caller handles itself (a 404, a 409).
    """
    client, conn = api_client(options, purpose)
    api_object = client.AppsV1Api(conn) if api == "apps" else client.CoreV1Api(conn)
    try:
        return fn(api_object, deadline.call_timeout())
    except TradeopsError:
        raise
    except Exception as err:  # noqa: BLE001 - ApiException, urllib3 errors; never the body
        handler = (on_status or {}).get(getattr(err, "status", None))
        if handler is not None:
            raise handler(err)
        raise BackendError("%s: %s" % (what, api_error(err)))
    finally:
        conn.close()

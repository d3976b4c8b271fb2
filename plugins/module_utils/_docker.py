# -*- coding: utf-8 -*-
# Copyright (c) tradeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The Docker backend: its options, their validation, its client and its errors, written once.

Used by the docker kill-switch method of ``halt_trading`` and the docker probe of ``health_check``.
Modelled on community.docker's ``DOCKER_COMMON_ARGS`` and ``AnsibleDockerClientBase``: a module
composes its argument spec from :data:`ARGSPEC` (documented in the ``tradeops.remediation.docker``
doc fragment; a unit test keeps the two in sync), validates it with :func:`docker_options`, and
reaches a container through :func:`call`, which opens a client bounded by the caller's deadline,
maps the SDK's errors to :class:`BackendError` and closes it. The docker SDK is imported lazily.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import socket

from ansible_collections.tradeops.remediation.plugins.module_utils._errors import (
    BackendError,
    MissingLibraryError,
    ValidationError,
)
from ansible_collections.tradeops.remediation.plugins.module_utils._validate import Record, compose, join, missing

DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"
SCHEMES = ("unix://", "tcp://", "ssh://", "http://", "https://", "npipe://")

# Keep in sync with plugins/doc_fragments/docker.py (tests/unit/plugins/test_doc_fragments.py).
ARGSPEC = dict(
    container=dict(type="str"),
    docker_host=dict(type="str"),
)


def argspec(**extra):
    """A fresh copy of :data:`ARGSPEC` plus ``extra``."""
    return compose(ARGSPEC, extra)


class DockerOptions(Record):
    """The validated options of one container on one Docker daemon (:func:`docker_options` builds it)."""

    __slots__ = ("container", "docker_host")
    DEFAULTS = {"docker_host": DEFAULT_DOCKER_HOST}

    def describe(self):
        return "container %s at %s" % (self.container, self.docker_host)


def docker_options(spec, where=""):
    """Validate and normalise ``container`` (required) and ``docker_host``; messages name ``where.option``."""
    container = spec.get("container")
    if missing(container):
        raise ValidationError("%s is required" % join(where, "container"))
    host = spec.get("docker_host")
    if missing(host):
        host = DEFAULT_DOCKER_HOST
    elif not isinstance(host, str) or not host.startswith(SCHEMES):
        raise ValidationError("%s must be a Docker daemon URL (%s...), got %r"
                              % (join(where, "docker_host"), ", ".join(SCHEMES), host))
    return DockerOptions(container=str(container), docker_host=host)


def call(options, deadline, fn, purpose="the docker backend"):
    """``fn(client)`` on a Docker client bounded by ``deadline``; SDK errors as :class:`BackendError`.

    A missing container is reported as "no container named X"; a daemon that cannot be reached,
    with what to check.
    """
    try:
        import docker
        from docker.errors import DockerException, NotFound
    except ImportError:
        raise MissingLibraryError("docker", purpose)
    try:
        conn = docker.DockerClient(base_url=options.docker_host, timeout=deadline.call_timeout())
    except (DockerException, OSError) as err:
        raise BackendError("docker at %s: cannot reach the Docker daemon (is dockerd running, and can this "
                           "user read its socket?): %s" % (options.docker_host, err))
    try:
        return fn(conn)
    except NotFound:
        raise BackendError("docker at %s: no container named %s" % (options.docker_host, options.container))
    except (DockerException, socket.timeout, OSError) as err:
        raise BackendError("docker %s: %s" % (options.describe(), err))
    finally:
        conn.close()


def container_call(options, deadline, fn, purpose="the docker backend"):
    """``fn(container)`` on the container object of ``options`` (see :func:`call`)."""
    return call(options, deadline, lambda conn: fn(conn.containers.get(options.container)), purpose)

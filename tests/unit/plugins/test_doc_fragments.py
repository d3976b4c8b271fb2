"""Each backend's doc fragment matches its argument spec, and the copies in the modules are current.

The fragments (plugins/doc_fragments/{http_options,redis,docker,kubernetes,postgres}.py) document each backend's
options once; the backends' module_utils (_http.py, _redis.py, ...) define them once; the modules take
them inside lists, where Ansible merges no fragment, so ``make docs`` (scripts/docs.py) writes copies
between "# fragment:" lines of their DOCUMENTATION. These tests fail when any of the three drift.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml
from ansible_collections.tradeops.remediation.plugins.doc_fragments import docker as docker_fragment
from ansible_collections.tradeops.remediation.plugins.doc_fragments import http_options as http_fragment
from ansible_collections.tradeops.remediation.plugins.doc_fragments import kubernetes as kubernetes_fragment
from ansible_collections.tradeops.remediation.plugins.doc_fragments import postgres as postgres_fragment
from ansible_collections.tradeops.remediation.plugins.doc_fragments import redis as redis_fragment
from ansible_collections.tradeops.remediation.plugins.doc_fragments import venue as venue_fragment
from ansible_collections.tradeops.remediation.plugins.module_utils import (
    _docker,
    _http,
    _kubernetes,
    _postgres,
    _redis,
    _venue,
)
from ansible_collections.tradeops.remediation.plugins.modules import (
    halt_trading,
    health_check,
    rotate_secret,
    venue_guard,
)

from tests.unit.plugins.modules.test_health_check import _argspec_shape, _doc_options

ROOT = Path(__file__).resolve().parents[3]

FRAGMENTS = {
    "http_options.transport": (http_fragment.ModuleDocFragment.TRANSPORT, _http.TRANSPORT_ARGSPEC),
    "http_options.auth": (http_fragment.ModuleDocFragment.AUTH, _http.AUTH_ARGSPEC),
    "redis": (redis_fragment.ModuleDocFragment.DOCUMENTATION, _redis.ARGSPEC),
    "docker": (docker_fragment.ModuleDocFragment.DOCUMENTATION, _docker.ARGSPEC),
    "kubernetes": (kubernetes_fragment.ModuleDocFragment.DOCUMENTATION, _kubernetes.ARGSPEC),
    "postgres": (postgres_fragment.ModuleDocFragment.DOCUMENTATION, _postgres.postgres_connection_spec()),
    "venue": (venue_fragment.ModuleDocFragment.DOCUMENTATION, _venue.ACCOUNT_ARGSPEC),
}
SECRETS = {"http_options.auth": {"token"}, "redis": {"password"}, "kubernetes": {"api_key"},
           "postgres": {"login_password"}, "venue": {"api_key", "secret", "password"}}


def _docs_script():
    spec = importlib.util.spec_from_file_location("tradeops_docs_script", ROOT / "scripts" / "docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", sorted(FRAGMENTS))
def test_each_fragment_documents_exactly_its_backends_argument_spec(name):
    text, spec = FRAGMENTS[name]
    options = yaml.safe_load(text)["options"]
    assert _doc_options(options) == _argspec_shape(spec)
    assert {option for option, entry in spec.items() if entry.get("no_log")} == SECRETS.get(name, set())
    for option, entry in options.items():
        assert entry.get("description"), f"{name}: {option} has no description"


def test_the_modules_copies_of_the_fragments_are_current():
    docs = _docs_script()
    stale = [path.name for path in sorted(docs.MODULES.glob("*.py")) if docs.update(path, write=False)]
    assert stale == [], f"run `make docs`: the fragment copies in {stale} are stale"


def test_a_stale_copy_is_detected_and_rewritten():
    docs = _docs_script()
    stale = "options:\n  x:\n    suboptions:\n      # fragment: docker prefix=(docker)\n      container:\n" \
            "        description: an old text\n        type: str\n      # end fragment\n"
    fresh = docs.render(stale)
    assert fresh != stale
    assert "(docker) The container's name or id." in fresh and "docker_host:" in fresh
    assert docs.render(fresh) == fresh
    per_option = docs.render('      # fragment: docker prefix=(docker) prefix@docker_host="(docker, probes)"\n'
                             '      # end fragment')
    assert "(docker) The container's name" in per_option and "(docker, probes) The Docker daemon" in per_option
    with pytest.raises(ValueError, match="unknown argument"):
        docs.render("      # fragment: docker suffix=x\n      # end fragment")
    with pytest.raises(ValueError, match="no '# end fragment'"):
        docs.render("      # fragment: redis\n      host:\n")


@pytest.mark.parametrize("module", [halt_trading, health_check, rotate_secret, venue_guard],
                         ids=lambda m: m.__name__.split(".")[-1])
def test_the_modules_take_the_backend_options_from_the_fragments(module):
    """Every backend option a module documents inside its lists comes from a fragment block."""
    text = module.DOCUMENTATION
    blocks = [line.split("# fragment:")[1].split()[0] for line in text.splitlines() if "# fragment:" in line]
    assert blocks, "no fragment block"
    assert set(blocks) <= set(FRAGMENTS)
    assert text.count("# fragment:") == text.count("# end fragment")

#!/usr/bin/env python3
"""Write the backends' doc fragments into the modules' DOCUMENTATION (``make docs``).

A backend's options (plugins/doc_fragments/{http_options,redis,docker,kubernetes}.py) are documented once,
in its fragment. Ansible merges fragments into a module's top-level options only, and our modules
take these options inside lists (``targets[].methods[]``, ``probes[]``, ``test``), so the copies
live in the modules, between two YAML comment lines of their DOCUMENTATION::

    # fragment: http_options.transport prefix="(http, metric)" skip=client_key
    ...written by this script...
    # end fragment

``prefix@<option>=`` gives one option its own prefix (an option that more types use than the rest of the
block). ``fragment:`` names ``<fragment>[.<group>]`` (the fragment file and its attribute: ``http_options.transport``
is ``TRANSPORT`` of ``http_options.py``; ``redis`` is ``DOCUMENTATION`` of ``redis.py``). ``prefix=`` is
put before each description (the method or probe types the options belong to); ``skip=`` leaves
out options written elsewhere in the same block. ``python scripts/docs.py`` rewrites the modules;
``--check`` exits 1 naming the stale ones (tests/unit/plugins/test_doc_fragments.py runs it).
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import re
import shlex
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
FRAGMENTS = ROOT / "plugins" / "doc_fragments"
MODULES = ROOT / "plugins" / "modules"
BEGIN = re.compile(r"^(?P<indent> *)# fragment: (?P<name>[a-z_]+(?:\.[a-z_]+)?)(?P<args>.*)$")
END = re.compile(r"^ *# end fragment *$")
KEYS = ("description", "type", "elements", "choices", "default", "aliases")


def fragment_options(name: str) -> dict:
    """The ``options`` of fragment ``<file>[.<group>]``, in their order."""
    file, _, group = name.partition(".")
    spec = importlib.util.spec_from_file_location(f"_fragment_{file}", FRAGMENTS / f"{file}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = getattr(module.ModuleDocFragment, group.upper() if group else "DOCUMENTATION")
    return yaml.safe_load(text)["options"]


def _scalar(value) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10**6, allow_unicode=True).strip().removesuffix(
        "\n...").removesuffix("...").strip()


def render_options(options: dict, indent: str, prefix: str = "", skip: tuple = (), prefixes=None) -> list[str]:
    lines = []
    for name, option in options.items():
        if name in skip:
            continue
        prefix_of = (prefixes or {}).get(name, prefix)
        lines.append(f"{indent}{name}:")
        for key in KEYS:
            if key not in option:
                continue
            value = option[key]
            if key == "description" and prefix_of:
                value = ([f"{prefix_of} {value[0]}", *value[1:]] if isinstance(value, list)
                         else f"{prefix_of} {value}")
            if isinstance(value, list) and key == "description":
                lines.append(f"{indent}  {key}:")
                lines.extend(f"{indent}    - {_scalar(item)}" for item in value)
            else:
                lines.append(f"{indent}  {key}: {_scalar(value)}")
    return lines


def render(documentation: str) -> str:
    """``documentation`` with every fragment block written anew."""
    out, lines, i = [], documentation.split("\n"), 0
    while i < len(lines):
        line = lines[i]
        out.append(line)
        i += 1
        match = BEGIN.match(line)
        if not match:
            continue
        args = dict(arg.split("=", 1) for arg in shlex.split(match["args"]))
        prefixes = {key.split("@", 1)[1]: value for key, value in args.items() if key.startswith("prefix@")}
        unknown = set(args) - {"prefix", "skip"} - {"prefix@" + name for name in prefixes}
        if unknown:
            raise ValueError(f"{line.strip()}: unknown argument(s) {', '.join(sorted(unknown))}")
        end = next((j for j in range(i, len(lines)) if END.match(lines[j])), None)
        if end is None:
            raise ValueError(f"{line.strip()}: no '# end fragment' line after it")
        out.extend(render_options(fragment_options(match["name"]), match["indent"], args.get("prefix", ""),
                                  tuple(filter(None, args.get("skip", "").split(","))), prefixes))
        i = end
    return "\n".join(out)


def _documentation_span(source: str) -> tuple[int, int, str]:
    """Where the DOCUMENTATION string's text starts and ends in ``source``, and the text."""
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "DOCUMENTATION" for t in node.targets):
            text = node.value.value
            start = source.index(text)
            return start, start + len(text), text
    raise ValueError("no DOCUMENTATION")


def update(path: Path, write: bool) -> bool:
    """Whether ``path``'s DOCUMENTATION was stale (rewritten when ``write``)."""
    source = path.read_text()
    start, end, text = _documentation_span(source)
    new = render(text)
    if new == text:
        return False
    if write:
        path.write_text(source[:start] + new + source[end:])
    return True


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report stale modules; exit 1 if any")
    args = parser.parse_args(argv)
    stale = [path for path in sorted(MODULES.glob("*.py")) if update(path, write=not args.check)]
    for path in stale:
        print(f"{'stale' if args.check else 'rewrote'}: {path.relative_to(ROOT)}"
              + ("  (run: make docs)" if args.check else ""))
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())

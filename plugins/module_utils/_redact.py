# -*- coding: utf-8 -*-
# Copyright (c) tradeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one redaction implementation of the collection.

* :func:`redact` - every module_utils class: known secret values never reach a message or a result.
* :class:`TextRedactor` / :func:`redact_text` - free text (evidence files: process lists, env files,
  logs, configs): known secret values anywhere, plus the WHOLE value of anything whose name looks
  secret (``NAME=value``, ``NAME: value``, ``--name value``, quoted or not, JSON and YAML values,
  ``export``/``declare -x`` lines, backslash-continued values), URL credentials and private key blocks.
* :func:`looks_secret` / :func:`secret_values` - which names hold secrets and which values a
  structure (inventory variables) holds under them, at any depth.

Plain Python with no Ansible import: the evidence role also runs this file as is on the host.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import functools
import json
import re

try:
    from urllib.parse import quote as _url_quote
except ImportError:  # pragma: no cover - Python 2
    from urllib import quote as _url_quote

REDACTED = "********"
# The marker of redacted text in evidence files.
TEXT_MARKER = "<redacted>"

# Words that make a name secret. Matched anywhere in the name, without word boundaries, so ADMIN_PW,
# MYSQL_PWD, HMAC_SALT, X-Admin-Token, db-password, api_key, apiKey, secret_id all match.
SECRET_WORDS = "pass|pw|secret|token|key|salt|cred|auth|private|dsn|cookie"

# Known secret values shorter than this are not replaced wherever they occur (a 1-character value
# would mangle every line); they are still redacted where a pattern catches them (NAME=value ...).
MIN_VALUE_LENGTH = 4

# A name that contains a secret word but whose last part says it names WHERE or WHAT KIND of
# secret, not the secret itself (token_header, password_file, auth_method, key_column, ...).
# "id" counts only without "secret" in the name (secret_id is a credential, key_id is not).
_NOT_SECRET_PARTS = frozenset("""
    file files path paths dir directory header headers url urls uri type types name names method methods
    mode enabled disabled required ttl timeout timeouts length len alphabet policy column columns host
    hosts port user username login format pattern regex prefix suffix field fields store source
    sources interval count age expiry expires fingerprint version env var vars algorithm size
    retries attempts id ids
""".split())
_NOT_SECRET_NAMES = frozenset(("key", "keys"))
_NAME_PARTS = re.compile(r"[_.\-\s\\\"']+|(?<=[a-z0-9])(?=[A-Z])")

# Authorization schemes: "Authorization: Bearer X" redacts the scheme's credential as its value.
_SCHEMES = r"(?:Bearer|Basic|Digest|Token|Negotiate|NTLM|Bot|ApiKey|SSWS|Splunk|AWS4-HMAC-SHA256)"
# A value on one line: a quoted string (double quotes with escapes, single, JSON-escaped \"..\"),
# an auth scheme and its credential, an unterminated quote (to the end of the line), or a token
# up to whitespace or & , ; (with backslash escapes and backslash-newline continuations).
_TOKEN = r"(?:\\\r?\n[ \t]*|\\.|[^\s&,;\\])+"
_VALUE_INLINE = (
    r"(?:\\\"(?:[^\"\\\n]|\\[^\"\n])*\\\""
    r"|\"(?:[^\"\\\n]|\\.)*\""
    r"|'[^'\n]*'"
    r"|(?i:" + _SCHEMES + r")[ \t]+" + _TOKEN +
    r"|[\"'][^\n]*"
    r"|" + _TOKEN + r")"
)
# The rest of a line, and the lines continued from it by a trailing backslash.
_REST_OF_LINE = r"[^\n]*(?:(?<=\\)\n[^\n]*)*"
_PRIVATE_KEY = re.compile(
    r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----[\s\S]*?(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)")
_URL_CREDENTIAL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*:(?P<v>[^\s/]*)@")
_BLOCK_INDICATOR = re.compile(r"^(?:[|>][-+0-9]*)?[ \t]*(?:#.*)?$")


def _name_regex(words):
    return r"[\w.-]*(?i:" + words + r")[\w.-]*"


def _compile_rules(words):
    name = _name_regex(words)
    line = re.compile(
        # at the start of a line: NAME=..., NAME: ..., also indented, commented (#),
        # a YAML list item (- ), after export/declare -x/typeset/readonly/local/set,
        # with the name quoted or not (JSON, compose). The value is the rest of the line
        # (a quoted value may span lines; a trailing backslash continues it).
        r"^(?P<indent>[ \t]*)(?:#[ \t]*)?(?:-[ \t]+)?"
        r"(?:(?:export|declare|typeset|readonly|local|set)(?:[ \t]+-{1,2}[A-Za-z]+)*[ \t]+)?"
        r"(?P<q>[\"']?)(?P<name>" + name + r")(?P=q)"
        r"(?:[ \t]*=[ \t]*|[ \t]*:(?:[ \t]+|(?=[\"'\n])|$))"
        r"(?P<v>(?:\"(?:[^\"\\]|\\[\s\S])*\"|'[^']*')?" + _REST_OF_LINE + r")",
        re.MULTILINE)
    spaced = re.compile(
        # a config line "NAME value" (redis.conf requirepass, csh setenv): one value, not the line
        r"^[ \t]*(?:setenv[ \t]+)?(?P<name>" + name + r")[ \t]+(?![=:#])(?P<v>" + _VALUE_INLINE + r")",
        re.MULTILINE)
    inline = re.compile(
        # anywhere: NAME=value, NAME = value, NAME: value, "NAME": "value", 'NAME': 'value',
        # \"NAME\": \"value\" (JSON inside a JSON string)
        r"(?<![\w.-])(?P<q>\\?[\"']|)(?P<name>" + name + r")(?P=q)"
        r"(?:[ \t]*=[ \t]*|[ \t]*:(?=[ \t\"'\\])[ \t]*)"
        r"(?P<v>" + _VALUE_INLINE + r")")
    flag = re.compile(
        # a command-line option followed by its value: --admin-token VALUE, -password 'VALUE'
        r"(?<![\w.-])(?P<name>-{1,2}" + name + r")[ \t]+(?!-)(?P<v>" + _VALUE_INLINE + r")")
    return line, spaced, inline, flag


_DEFAULT_RULES = _compile_rules(SECRET_WORDS)
_DEFAULT_NAME = re.compile(_name_regex(SECRET_WORDS))


def _not_secret_name(name):
    parts = [p.lower() for p in _NAME_PARTS.split(name) if p]
    if not parts:
        return True
    if "".join(parts) in _NOT_SECRET_NAMES:
        return True
    last = parts[-1]
    if last in ("id", "ids") and any("secret" in p for p in parts):
        return False
    return last in _NOT_SECRET_PARTS


def looks_secret(name, words=None):
    """Whether a variable, key, header or option name says it holds a secret.

    ``words`` is a regular expression of secret words (default :data:`SECRET_WORDS`), matched
    case-insensitively anywhere in the name. Names whose last part says where or what kind the
    secret is (``token_header``, ``password_file``, ``key_id``, plain ``key``) do not.
    """
    return _looks_secret(str(name), words)


# A fleet's variables repeat the same few hundred names many thousand times (every engine's result, on every host).
@functools.lru_cache(maxsize=4096)
def _looks_secret(name, words):
    regex = _DEFAULT_NAME if words is None else re.compile(_name_regex(words))
    return bool(regex.search(name)) and not _not_secret_name(name)


def _is_vaulted(value):
    return type(value).__name__ in ("AnsibleVaultEncryptedUnicode", "EncryptedString")


def secret_values(data, words=None, min_length=MIN_VALUE_LENGTH, secret=False, memo=None):
    """The secret values held in ``data`` (dicts and lists of scalars, e.g. a host's variables).

    A scalar is secret when its key looks secret (:func:`looks_secret`) at any depth, or when it
    is anywhere inside a value whose key looks secret (``secrets: {db: x}``), except under a key
    that names a non-secret part (``name``, ``path``, ``url``, ...). Vault-encrypted values are
    always secret. Booleans and None are not values; values shorter than ``min_length`` are left
    out (see :data:`MIN_VALUE_LENGTH`). Returns a sorted list of unique strings.

    ``memo``: a dict shared by calls over data that holds the same containers (every host's
    variables hold the same fleet-wide results), so each container is walked once. It keeps the
    containers it has seen alive; pass a new one for data that may have changed.
    """
    found = set()
    _collect(data, words, secret, found, memo)
    return sorted(v for v in found if len(v) >= int(min_length))


def _collect(value, words, secret, found, memo=None):
    if _is_vaulted(value):
        found.add(str(value))
    elif isinstance(value, (dict, list, tuple, set, frozenset)):
        if memo is None:
            _collect_items(value, words, secret, found, None)
            return
        key = (id(value), bool(secret))
        seen = memo.get(key)
        if seen is None or seen[0] is not value:
            inner = set()
            _collect_items(value, words, secret, inner, memo)
            # the container itself is kept, so its id cannot be reused by another one while the memo lives
            seen = memo[key] = (value, frozenset(inner))
        found.update(seen[1])
    elif secret and value is not None and not isinstance(value, bool):
        found.add(str(value))


def _collect_items(value, words, secret, found, memo):
    if isinstance(value, dict):
        for key, item in value.items():
            key = str(key)
            _collect(item, words, looks_secret(key, words) or (secret and not _not_secret_name(key)), found, memo)
    else:
        for item in value:
            _collect(item, words, secret, found, memo)


def _value_forms(value):
    """The forms a secret value takes in text: as is, each of its lines, JSON-escaped, URL-encoded."""
    forms = {value}
    forms.update(line.strip() for line in value.splitlines())
    forms.add(json.dumps(value)[1:-1])
    forms.add(_url_quote(value, safe=""))
    return forms


class TextRedactor:
    """Redacts free text by known secret values and by pattern; see :func:`redact_text`."""

    def __init__(self, values=(), words=None, marker=TEXT_MARKER, min_length=MIN_VALUE_LENGTH):
        self.marker = marker
        self.min_length = int(min_length)
        self._rules = _DEFAULT_RULES if words is None else _compile_rules(words)
        forms = set()
        for value in values or ():
            if value is None or isinstance(value, bool):
                continue
            value = str(value)
            if len(value) >= self.min_length:
                forms.update(f for f in _value_forms(value) if len(f) >= self.min_length)
        forms.discard(marker)
        # longest first: a secret that contains another one is redacted whole
        self._values = re.compile("|".join(re.escape(f) for f in sorted(forms, key=len, reverse=True))) \
            if forms else None

    def value_spans(self, text):
        if self._values is None:
            return []
        return [m.span() for m in self._values.finditer(text)]

    def pattern_spans(self, text):
        spans = [m.span() for m in _PRIVATE_KEY.finditer(text)]
        spans.extend(m.span("v") for m in _URL_CREDENTIAL.finditer(text))
        line, spaced, inline, flag = self._rules
        for m in line.finditer(text):
            if _not_secret_name(m.group("name")):
                continue
            start, end = m.span("v")
            rest = m.group("v")
            if not rest.strip() or _BLOCK_INDICATOR.match(rest):
                # YAML: "password: |" or "secrets:" followed by more indented lines
                end = _indented_block_end(text, end, len(m.group("indent")))
            if end > start:
                spans.append((start, end))
        for regex in (spaced, inline, flag):
            for m in regex.finditer(text):
                if not _not_secret_name(m.group("name")) and m.end("v") > m.start("v"):
                    spans.append(m.span("v"))
        return spans

    def redact(self, text, patterns=True):
        """``text`` with every known secret value, and with ``patterns`` every secret-looking
        value, replaced by the marker. Spans are found on the original text and merged, so one
        rule never hides a secret from another."""
        if not text:
            return text
        spans = self.value_spans(text)
        if patterns:
            spans.extend(self.pattern_spans(text))
        if not spans:
            return text
        out = []
        pos = 0
        for start, end in _merge(spans):
            out.append(text[pos:start])
            out.append(self.marker)
            pos = end
        out.append(text[pos:])
        return "".join(out)


def _indented_block_end(text, end, indent):
    """Where the block under a YAML key ends: the lines after ``end`` indented deeper than
    ``indent`` (blank lines inside it included), or list items (``- x``) at the same indent."""
    pos = end
    block_end = end
    while pos < len(text) and text[pos] == "\n":
        nxt = text.find("\n", pos + 1)
        if nxt < 0:
            nxt = len(text)
        line = text[pos + 1:nxt]
        stripped = line.lstrip(" \t")
        depth = len(line) - len(stripped)
        if stripped:
            if depth > indent or (depth == indent and stripped[:2] in ("- ", "-")):
                block_end = nxt
            else:
                break
        pos = nxt
    return block_end


def _merge(spans):
    merged = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            if end > merged[-1][1]:
                merged[-1][1] = end
        else:
            merged.append([start, end])
    return merged


def redact_text(text, values=(), words=None, marker=TEXT_MARKER, min_length=MIN_VALUE_LENGTH, patterns=True):
    """Redact free text: every known secret value (at least ``min_length`` long, also JSON-escaped,
    URL-encoded and line by line), and with ``patterns`` the whole value of every name that looks
    secret, URL credentials and private key blocks. See :class:`TextRedactor` to reuse the setup."""
    return TextRedactor(values, words=words, marker=marker, min_length=min_length).redact(text, patterns=patterns)


def redact(text, values):
    """Replace every value in ``text`` (a str, or the str leaves of dicts and lists) by ``********``.

    Empty values are ignored (replacing "" would mangle every string), and longer values are
    replaced first, so a secret that contains another is not half-revealed.
    """
    values = [v for v in (values or []) if v]
    if not values or text is None:
        return text
    if isinstance(text, str):
        for value in sorted(values, key=len, reverse=True):
            text = text.replace(value, REDACTED)
        return text
    if isinstance(text, dict):
        return dict((k, redact(v, values)) for k, v in text.items())
    if isinstance(text, (list, tuple)):
        return [redact(v, values) for v in text]
    return text

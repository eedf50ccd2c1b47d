"""Secrets: provider API keys and tokens, private key blocks, JSON web tokens, bearer tokens, `password=`
values, and credentials in code and config files (DB_PASSWORD=..., "client_secret": "...", githubToken: '...'),
told from code that only names one (variables, token ids, calls, types). Every repeat in these patterns is
bounded, so a search stays linear in the text's length."""

from __future__ import annotations

import re

# The cheap test (tasks.pii.patterns.PLAUSIBLE) that decides which texts SECRET_PATTERNS read is what each of
# them needs (a provider's prefix, a private key block, a password word before ':' or '='), so
# prose that merely says "key" or "pass" is not searched by all of them.
_SECRET_WORDS = r"(?i:password|passwd|pwd|pass|secret|api[_-]?key|access[_-]?token|auth[_-]?token)"
# the word a credential's name holds as code and config files write it, inside an identifier (DB_PASSWORD,
# AWS_SECRET_ACCESS_KEY, githubToken): the credential rule's, and what the gate lets through before ':' or '='
_CREDENTIAL_NAME = r"(?:password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key|secret[_-]?key|private[_-]?key|credentials?)"
_CREDENTIAL_WORDS = "(?i:" + _CREDENTIAL_NAME + ")"
SECRET_NEEDS = (r"AKIA|ASIA|gh[pousr]_|xox[abposr]-|[sr]k_(?:live|test)_|sk-|AIza|PRIVATE KEY|eyJ|(?i:bearer)\s|"
                r"(?:" + _CREDENTIAL_WORDS + r"[A-Za-z0-9_.-]{0,64}[\"']?|" + _SECRET_WORDS + ")")  # the last: then ':' or '='


_KEY_SHAPE = re.compile(r"(?=[^\d]*\d)(?=[^A-Za-z]*[A-Za-z])[A-Za-z0-9_\-./+=]{8,}")
_NAMES_A_CREDENTIAL = re.compile(r"(?i)pass|pwd|secret|credential|token|key")
_SNAKE_CASE = re.compile(r"[a-z]+(?:_[a-z0-9]+)+")  # token_ids_0: a variable
_TYPE_NAME = re.compile(r"[A-Z][a-z]+[A-Z][A-Za-z]*|(?i:str|string|bytes|int|integer|bool|boolean|float|dict|list|"
                        r"none|any|optional|object)")  # `secret: SecretStr`, `:type password: string`
_CODE_GOES_ON = re.compile(r"\s*[,)|=\]]")  # after `name: value`: an annotation, a dict item, an argument
_IDENTIFIER_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")  # user_password, cfg.token

SECRET_PATTERNS = [
    ("aws_access_key", re.compile(r"\b(?P<secret>(?:AKIA|ASIA)[0-9A-Z]{16})\b")),
    ("github_token", re.compile(r"\b(?P<secret>gh[pousr]_[A-Za-z0-9]{36,255})\b")),
    ("slack_token", re.compile(r"\b(?P<secret>xox[abposr]-[A-Za-z0-9-]{10,})")),
    ("stripe_key", re.compile(r"\b(?P<secret>[sr]k_(?:live|test)_[A-Za-z0-9]{16,})\b")),
    ("openai_key", re.compile(r"\b(?P<secret>sk-(?:proj-)?[A-Za-z0-9_-]{20,})")),
    ("google_api_key", re.compile(r"\b(?P<secret>AIza[0-9A-Za-z_-]{35})")),
    ("private_key", re.compile(r"(?P<secret>-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(?:-----END [A-Z ]*PRIVATE KEY-----|\Z))",
                               re.DOTALL)),
    ("password_assignment", re.compile(
        r"(?i)\b(?P<name>password|passwd|pwd|pass|secret|api[_-]?key|access[_-]?token|auth[_-]?token)\b\s*"
        r"(?P<sep>[:=])\s*(?P<q>[\"']?)(?P<secret>[^\s\"',;()\[\]{}<>]{4,})(?P=q)(?![(\[\w.])")),
    # a credential in code or config: the word inside an identifier (DB_PASSWORD=, "aws_secret_access_key":,
    # githubToken:, x-api-key:) and a literal value of six or more characters, not a template or a call
    ("credential_assignment", re.compile(
        # (the identifier's parts bounded in number and length, so a search stays linear in the text's length)
        r"(?i)(?<![A-Za-z0-9_.-])(?P<name>(?:[A-Za-z0-9]{1,32}[_.-]){1,6}" + _CREDENTIAL_NAME
        + r"(?:[_.-][A-Za-z0-9]{1,32}){0,6}|" + _CREDENTIAL_NAME + r"(?:[_.-][A-Za-z0-9]{1,32}){1,6}"
        r"|(?:client|auth|access|refresh|api|app|bot|db|github|gitlab|slack|aws)" + _CREDENTIAL_NAME + r")"
        r"[\"']?\s*(?P<sep>[:=])\s*(?P<q>[\"']?)(?P<secret>(?![$%<{])[^\s\"',;()\[\]{}<>]{6,})(?P=q)(?![(\[\w.])")),
    ("json_web_token", re.compile(r"\b(?P<secret>eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,})")),
    ("bearer_token", re.compile(r"(?i)\bbearer\s+(?P<secret>[A-Za-z0-9._~+/-]{20,}=*)")),
]


def find_secrets(text: str):
    """(start, end, score) of every secret value in `text`."""
    for kind, pattern in SECRET_PATTERNS:
        for m in pattern.finditer(text):
            if kind.endswith("_assignment") and not _credential_value(m):
                continue
            yield m.start("secret"), m.end("secret"), 1.0


def _credential_value(m: re.Match) -> bool:
    """Whether the value a password or credential assignment names is a literal secret, not code or prose.
    Under a password or secret name: a value with a letter that is, unquoted, no variable, attribute or type
    of code: after an '=' no identifier (`password = user_password`, `secret=self.secret`) unless the name
    is an environment variable's (DB_PASSWORD=changeme); after a ':' (prose, YAML, headers: "password:
    hunter2") nothing that goes on as code does (`password: bytes | None = None`, `"client_secret":
    client_secret,`), and after a bare "pass" a value with more than letters ("First pass: canonical").
    Not a name inside an ARN (`...:secret:rds-*`) or a docstring's `:param password:`, nor a value that is
    words naming a credential ("PASSWORD", 'aws_secret_access_key'). Under a token or key name, which code uses for much else
    (image_token_id: "image_token_index", Token.Prompt: '#ansigreen'): a key's shape, eight or more letters
    and digits (and _-./+=) with both."""
    value, name, text = m.group("secret"), m.group("name"), m.string
    before = text[max(0, m.start("name") - 8): m.start("name")]
    if before.endswith((":", ":param ", ":type ")) or (  # an ARN's part, a docstring's field
            _NAMES_A_CREDENTIAL.search(value) and not any(c.isdigit() for c in value)):  # "PASSWORD": words
        return False
    if not any(word in name.lower() for word in ("pass", "pwd", "secret", "credential")):
        return bool(_KEY_SHAPE.fullmatch(value)) and not _SNAKE_CASE.fullmatch(value)
    if not any(c.isalpha() for c in value):
        return False
    if m.group("q"):
        return True
    if m.group("sep") == "=":
        return name.isupper() or not _IDENTIFIER_PATH.fullmatch(value)
    if _CODE_GOES_ON.match(text, m.end()) or _TYPE_NAME.fullmatch(value):
        return False
    return name.lower() != "pass" or not value.isalpha()

"""Keep secrets out of logs, params and tags: URLs lose their ``user:password@`` part."""

import re
import urllib.parse

_USERINFO = re.compile(r"//[^/@\s'\"]*@")


def redact_url(url: str) -> str:
    """``url`` with any ``user:password@`` replaced by ``***@``, safe to log."""
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urllib.parse.urlunsplit(parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]))


def redact_text(text: str) -> str:
    """``text`` (an error message, say) with the userinfo of any URL in it replaced by ``***@``."""
    return _USERINFO.sub("//***@", text)

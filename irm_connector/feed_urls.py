"""Which URLs may carry the Management API token: HTTPS on the configured API root, under the tenant's feed,
and a ``contentUri`` under its ``audit/`` folder. A forged queue message or a malformed ``NextPageUri`` must
never send the bearer token anywhere else, not even elsewhere on the right host.
"""

from __future__ import annotations

from yarl import URL

from .errors import UntrustedUrlError

__all__ = ["FeedUrls"]

#: Percent-escapes yarl leaves encoded that a server may still decode into a path separator or a second
#: round of escapes: a URL carrying one could leave the checked folder on the server's side.
_PATH_ESCAPES = ("%2f", "%5c", "%25")


class FeedUrls:
    """The URL check of one tenant's feed on one API root."""

    def __init__(self, api_root: str, tenant_id: str) -> None:
        root = URL(api_root)
        self._origin = (root.host or "", root.port)
        self._root = str(root.origin())
        tenant = tenant_id.lower()
        # NextPageUri may read /api/v1/ rather than /api/v1.0/ (apis.md); both name the same feed.
        self._feed = tuple(f"/api/{version}/{tenant}/activity/feed/" for version in ("v1.0", "v1"))
        self._audit = tuple(prefix + "audit/" for prefix in self._feed)

    def check(self, url: str, what: str = "URL") -> URL:
        """``url`` as the request will be made, if it may carry the token: HTTPS on the API root, under this
        tenant's feed, and for a ``contentUri`` under its ``audit/`` folder. Anything else, including text
        that does not parse as a URL, raises :class:`UntrustedUrlError`.

        The check judges the URL after yarl's normalization (percent-decoding, dot segments), which is what
        aiohttp requests, and the client's request sends that same object: what was checked is what is sent."""
        try:
            parsed = URL(url)
            origin = ((parsed.host or "").lower(), parsed.port)
        except (ValueError, TypeError):  # "https://[", a port out of range: yarl refuses to parse them
            raise UntrustedUrlError(what, url, "it is not a URL") from None
        path = parsed.raw_path.lower()
        folders = self._audit if what == "contentUri" else self._feed
        if parsed.scheme != "https":
            reason = "it is not HTTPS"
        elif origin != self._origin:
            reason = f"it is not on O365_API_ROOT ({self._root})"
        elif parsed.user is not None or parsed.password is not None:
            reason = "it carries a user name or password"
        elif not any(path.startswith(folder) and len(path) > len(folder) for folder in folders):
            reason = f"it is not under this tenant's {'audit content' if what == 'contentUri' else 'feed'}"
        elif any(escape in path for escape in _PATH_ESCAPES):
            reason = "its path holds an escaped separator (%2F, %5C or %25)"
        else:
            return parsed
        # Only the origin: the path and query of a forged message may hold anything.
        shown = str(parsed.origin()) if parsed.host and parsed.scheme in ("http", "https") else ""
        raise UntrustedUrlError(what, url, reason, origin=shown[:120])

"""Small clients the stand-in tests share (msal app factory, a Management API caller)."""

from __future__ import annotations

from typing import Any

import aiohttp
import msal
import requests

from standins import StandIns


def msal_app(services: StandIns, credential: Any = None) -> msal.ConfidentialClientApplication:
    return msal.ConfidentialClientApplication(
        services.client_id,
        client_credential=services.client_secret if credential is None else credential,
        authority=services.authority,
        instance_discovery=False,
        http_client=requests.Session(),
    )


class Mgmt:
    """Small client for the management stand-in: returns (status, headers, json-or-text)."""

    def __init__(self, services: StandIns, http: aiohttp.ClientSession, token: str) -> None:
        self.services = services
        self.http = http
        self.token = token

    def url(self, path: str, version: str = "v1.0", tenant: str | None = None) -> str:
        tenant = tenant or self.services.tenant_id
        return f"{self.services.api_root}/api/{version}/{tenant}/activity/feed/{path}"

    async def call(
        self,
        method: str,
        url_or_path: str,
        *,
        token: str | None = None,
        **params: str,
    ) -> tuple[int, dict[str, str], Any]:
        url = url_or_path if url_or_path.startswith("https://") else self.url(url_or_path)
        headers = {"Authorization": f"Bearer {token or self.token}"}
        async with self.http.request(method, url, params=params or None, headers=headers) as resp:
            text = await resp.text()
            try:
                body: Any = await resp.json(content_type=None) if text else None
            except ValueError:
                body = text
            return resp.status, dict(resp.headers), body

    async def start(self, content_type: str = "Audit.General") -> tuple[int, dict[str, str], Any]:
        return await self.call("POST", "subscriptions/start", contentType=content_type)

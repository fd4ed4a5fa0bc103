"""FastAPI dependencies: the store of the app and the tenant of the presented API key."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from heavy.api.event_hub import EventHub
from heavy.api.open_streams import OpenStreams
from heavy.config import Settings
from heavy.logs import log_about
from heavy.store import Store, UnknownApiKey

bearer = HTTPBearer(auto_error=False, description="an API key from `heavy keys create`")


def get_store(request: Request) -> Store:
    return request.app.state.store


def get_event_hub(request: Request) -> EventHub:
    return request.app.state.event_hub


def get_open_streams(request: Request) -> OpenStreams:
    return request.app.state.open_streams


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_api_key(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> str:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise UnknownApiKey("missing API key: send 'Authorization: Bearer <key>'")
    return credentials.credentials


async def get_tenant(store: Annotated[Store, Depends(get_store)], api_key: Annotated[str, Depends(get_api_key)]) -> str:
    tenant = await store.tenants.resolve(api_key)
    log_about(tenant=tenant)  # the request's lines (its access line, an error's) name whose it was
    return tenant


StoreDep = Annotated[Store, Depends(get_store)]
EventHubDep = Annotated[EventHub, Depends(get_event_hub)]
OpenStreamsDep = Annotated[OpenStreams, Depends(get_open_streams)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
TenantDep = Annotated[str, Depends(get_tenant)]
ApiKeyDep = Annotated[str, Depends(get_api_key)]  # the presented key (a long stream checks it is still valid)

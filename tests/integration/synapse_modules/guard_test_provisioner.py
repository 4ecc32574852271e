"""A test-only Synapse module: another module provisioning accounts through the module API.

It serves `POST /_synapse/client/test_provisioner?localpart=<localpart>` and calls
`ModuleApi.register_user`, the path a provisioning module (e.g. an admin bot) takes.
"""

from __future__ import annotations

from typing import Any

from synapse.module_api import DirectServeJsonResource, ModuleApi


class _Resource(DirectServeJsonResource):
    def __init__(self, api: ModuleApi) -> None:
        super().__init__()
        self._api = api

    async def _async_render_POST(self, request: Any) -> tuple[int, dict[str, str]]:
        localpart = request.args[b"localpart"][0].decode()
        user_id = await self._api.register_user(localpart)
        return 200, {"user_id": user_id}


class Provisioner:
    def __init__(self, config: dict[str, Any], api: ModuleApi) -> None:
        api.register_web_resource("/_synapse/client/test_provisioner", _Resource(api))

"""The hsm-vault server: accounts, the card directory and the blob store, over HTTP.

`hsm_vault.server.app.create_app(settings)` is the FastAPI app factory;
`hsm_vault.server.settings.ServerSettings` is its one configuration object. See docs/api.md.
Nothing is imported here, so client commands that only need the settings do not load FastAPI.
"""

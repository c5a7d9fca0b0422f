"""A configuration with CORS keys, rules, resources and public endpoints: keys that exercise every CORS rule."""

from support.harness import sha256_hex

WEB = "web-player-key"          # CORS key: two origins, cors_endpoints, scoped to two resources
PARTNER = "partner-key"         # backend key with its own rules
BACKEND = "backend-key"         # backend key, full access
ANYWHERE = "anywhere-key"       # CORS key for "*" origins, cors_endpoints, no resources
FULL = "full-access-key"        # CORS key with full_access
NORMALISED = "normalised-key"   # origins written with default ports and upper case
DISABLED_CORS = "disabled-cors-key"
EXPIRED_CORS = "expired-cors-key"

APP = "https://app.example.com"
LOCAL = "http://localhost:8080"
FULL_ORIGIN = "https://admin.example.net"
DEAD_ORIGIN = "https://dead.example.org"   # only allowed by disabled / expired keys

CORS_ENDPOINTS = [
    {
        "methods": ["POST"],
        "paths": ["/api/stream", "/api/multistream/target", "/api/asset/request-upload", "/api/asset/url"],
    },
    {"methods": ["GET", "PATCH"], "paths": ["/api/stream/{id}", "/api/multistream/target/{id}", "/api/asset/{id}"]},
    {
        "methods": ["GET"],
        "paths": ["/api/stream/{id}/sessions", "/api/session/{id}", "/api/task/{id}", "/data/views/{id}/total"],
    },
]


def config(**cors) -> dict:
    return {
        "keys": [
            {"id": "web-player", "sha256": sha256_hex(WEB),
             "cors": {"allowed_origins": [APP, LOCAL], "full_access": False},
             "resources": ["stream-7f3a", "asset-19bc"]},
            {"id": "partner", "sha256": sha256_hex(PARTNER),
             "rules": [{"methods": ["GET"], "paths": ["/api/asset/{id}", "/data/views/{id}/total"]}]},
            {"id": "backend", "sha256": sha256_hex(BACKEND)},
            {"id": "anywhere", "sha256": sha256_hex(ANYWHERE), "cors": {"allowed_origins": ["*"]}},
            {"id": "full", "sha256": sha256_hex(FULL), "cors": {"allowed_origins": [FULL_ORIGIN], "full_access": True}},
            {"id": "normalised", "sha256": sha256_hex(NORMALISED),
             "cors": {"allowed_origins": ["HTTPS://Norm.Example.com:443", "http://norm.example.com:80"]}},
            {"id": "disabled-cors", "sha256": sha256_hex(DISABLED_CORS), "disabled": True,
             "cors": {"allowed_origins": [DEAD_ORIGIN], "full_access": True}},
            {"id": "expired-cors", "sha256": sha256_hex(EXPIRED_CORS), "expires_at": "2021-01-01T00:00:00Z",
             "cors": {"allowed_origins": [DEAD_ORIGIN], "full_access": True}},
        ],
        "cors_endpoints": CORS_ENDPOINTS,
        "public_endpoints": [{"methods": ["GET"], "paths": ["/healthz"]}],
        **({"cors": cors} if cors else {}),
    }

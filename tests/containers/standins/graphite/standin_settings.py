"""graphite-web settings of the stand-in: upstream's paths, carbon's cache queried for points
not yet on disk, a sqlite database on the storage volume."""
import secrets

SECRET_KEY = secrets.token_hex(32)
TIME_ZONE = "UTC"
ALLOWED_HOSTS = ["*"]
GRAPHITE_ROOT = "/usr/share/graphite-web"
STATIC_ROOT = "/usr/share/graphite-web/static"
CONF_DIR = "/opt/graphite/conf"
STORAGE_DIR = "/opt/graphite/storage"
WHISPER_DIR = "/opt/graphite/storage/whisper"
STANDARD_DIRS = [WHISPER_DIR]
LOG_DIR = "/opt/graphite/storage/log/webapp"
INDEX_FILE = "/opt/graphite/storage/index"
LOG_ROTATION = False
CARBONLINK_HOSTS = ["127.0.0.1:7002:a"]
CARBONLINK_TIMEOUT = 1.0
FUNCTION_PLUGINS = []
DATABASES = {"default": {"NAME": "/opt/graphite/storage/graphite.db",
                         "ENGINE": "django.db.backends.sqlite3"}}

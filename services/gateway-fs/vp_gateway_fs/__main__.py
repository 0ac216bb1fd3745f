"""gateway-fs service."""

from voiceplatform.runtime import service_main
from vp_gateway_fs.app import build

service_main(build)

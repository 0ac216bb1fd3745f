from voiceplatform.runtime import service_main
from vp_gateway_web.app import build

service_main(build)

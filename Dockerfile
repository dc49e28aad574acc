# farm: coordinator and agent image (Python 3.11, the reference engine's toolchain, Redis/Postgres clients).
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends gcc make libc6-dev adb openssh-client \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/farm
COPY pyproject.toml README.md ./
COPY farm ./farm
COPY device_profiles ./device_profiles
COPY jobs ./jobs
COPY agents ./agents
RUN pip install --no-cache-dir . && useradd --create-home farm
USER farm
ENV FARM_HOME=/home/farm/.farm
ENTRYPOINT ["farm"]
CMD ["--help"]

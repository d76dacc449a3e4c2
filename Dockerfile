# One image for every Evacuate service; the command picks the service:
#   python -m services.detector | services.planner | services.templater | services.api | services.executor
FROM python:3.11-slim

# libvirt-python builds against libvirt-dev (the executor's hypervisor connection).
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends libvirt-dev pkg-config gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*

RUN useradd --system --create-home --uid 10001 evacuate \
 && mkdir -p /var/lib/evacuate/shared \
 && chown evacuate /var/lib/evacuate/shared

WORKDIR /app
COPY pyproject.toml README.md ./
COPY services ./services
RUN pip install --no-cache-dir .

USER evacuate
ENV EVACUATE_HEALTH_PORT=8790 PYTHONUNBUFFERED=1
HEALTHCHECK --interval=10s --timeout=5s --retries=3 \
  CMD python -c "import os,urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ['EVACUATE_HEALTH_PORT'], timeout=4)"
CMD ["python", "-m", "services.planner"]

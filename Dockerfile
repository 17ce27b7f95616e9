# chatproxy in a container: docker build -t chatproxy . && docker run -p 8787:8787 chatproxy
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY chatproxy ./chatproxy
RUN pip install --no-cache-dir ".[postgres]" && mkdir /data && chown nobody /data
USER nobody
WORKDIR /data
# The default store is a SQLite file in /data (mount a volume there); set
# CHATPROXY_STORAGE__URL=postgres://... for PostgreSQL.
ENV CHATPROXY_SERVER__HOST=0.0.0.0 CHATPROXY_STORAGE__URL=sqlite:///data/chatproxy.db
EXPOSE 8787
HEALTHCHECK --interval=10s --timeout=3s CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8787/readyz', timeout=2)"]
CMD ["chatproxy", "serve"]

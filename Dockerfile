# One image for every hitlflow service; the command picks the service:
#   docker run hitlflow serve workflow|interaction|projections|timeout
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY contracts ./contracts
COPY services ./services
COPY projections ./projections
COPY hitlflow ./hitlflow
RUN pip install --no-cache-dir . && useradd --create-home hitlflow
USER hitlflow
ENV HITLFLOW_LOG_FORMAT=json
ENTRYPOINT ["hitlflow"]

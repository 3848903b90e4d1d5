# tuneloop on Apache Airflow: the official Airflow image, tuneloop's pinned requirements and
# the tuneloop package. docker-compose.yaml builds it and runs every Airflow component and the
# MLflow tracking server from it.
#
# The Python 3.11 variant: 3.11 is the interpreter the project's own test suite runs on, so the
# image runs what the tests have exercised (requirements.txt also resolves on 3.12).
# The tag's Airflow version is requirements.txt's apache-airflow pin
# (tests/unit/test_compose_file.py checks it), so installing requirements.txt keeps the
# image's own Airflow.
FROM apache/airflow:3.3.2-python3.11

# The local training backend (tuneloop.local: torch, transformers, peft, trl) adds gigabytes;
# only an image built with --build-arg LOCAL_TRAINING=true has it. torch comes from PyTorch's
# CPU index: the wheel on PyPI pulls CUDA libraries a CPU-only container never uses.
ARG LOCAL_TRAINING=false
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

# The official image installs Python packages as its airflow user, never as root.
USER airflow
WORKDIR /opt/airflow

COPY --chown=airflow:0 requirements.txt requirements-dev.txt requirements-local.txt ./

# requirements.txt, plus the CeleryExecutor's libraries at the versions the end-to-end tests run
# (pinned in requirements-dev.txt, beside the test tools this image leaves out): the Celery
# provider, Celery and Kombu, and psycopg 3, the PostgreSQL driver of Airflow's sync and async
# engines and of MLflow's store.
RUN grep -E '^(apache-airflow-providers-celery|celery\[redis\]|kombu|psycopg\[binary\])==' \
        requirements-dev.txt > /tmp/celery-stack.txt \
    && test "$(wc -l < /tmp/celery-stack.txt)" -eq 4 \
    && pip install --no-cache-dir -r requirements.txt -r /tmp/celery-stack.txt \
    && rm /tmp/celery-stack.txt

# torch first and on its own, then the rest (as `make install` does), so pip keeps the CPU build.
RUN if [ "$LOCAL_TRAINING" = "true" ]; then \
        pip install --no-cache-dir --index-url "$TORCH_INDEX_URL" \
            "$(grep -E '^torch==' requirements-local.txt)" \
        && pip install --no-cache-dir -r requirements-local.txt; \
    fi

# The package is installed editable from /opt/airflow/plugins: docker-compose.yaml mounts the
# repository's plugins/ there, so the code Airflow runs is the checkout's, and the recipes/
# beside it are where tuneloop looks for them (the folder next to plugins/).
COPY --chown=airflow:0 pyproject.toml ./
COPY --chown=airflow:0 plugins/ ./plugins/
COPY --chown=airflow:0 dags/ ./dags/
COPY --chown=airflow:0 recipes/ ./recipes/
RUN pip install --no-cache-dir --no-deps -e .

# Mount points of docker-compose.yaml's named volumes. Created here, owned by the airflow user,
# so that a new volume starts with this owner and the airflow user can write to it.
RUN mkdir -p /opt/airflow/project /opt/airflow/secrets /opt/airflow/mlflow

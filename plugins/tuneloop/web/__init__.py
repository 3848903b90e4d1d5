"""Pages the Airflow API server serves for tuneloop, behind the UI's extra links.

The plugin (``plugins/tuneloop_plugin.py``) mounts ``tuneloop.web.app.app`` at ``/tuneloop`` on
Airflow's API server, so the pages share its host, port, login and permissions:

- ``/tuneloop/jobs/<job name>?root=<jobs root>``: a local job (the "Job console" link of a job
  task on the local backend): state, progress, times, the tail of its log (refreshed while the
  job runs) and its outputs (manifest, checkpoint record, evaluation results);
- ``/tuneloop/mlflow?dag_id=&run_id=&task_id=``: the "MLflow run" link of every job task: the
  task's MLflow run (stage, evaluation or round run), found by the tags ``tuneloop.tracking.mirror``
  gives its runs; a redirect to the MLflow server's UI, or the run rendered here when the store
  is a local SQLite file or a database; before ``decide`` has mirrored the round, a page that
  says so, with a link to the campaign's experiment;
- ``/tuneloop/mlflow/runs/<run id>?dag_id=``: a run of a local store, rendered here.

Every page also answers ``format=json``.

Rules: only files inside the configured local roots are read (``tuneloop.web.roots``: no
``..``, no absolute path, no symlink out of them); a job's environment is never shown; every
page needs an Airflow login with read access to the DAG the job or run belongs to.

``tuneloop.links`` (standard library only) builds the links; everything else here is
imported by the API server only.
"""

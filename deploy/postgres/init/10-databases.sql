-- Runs once, when the compose stack's Postgres volume is created (docker-entrypoint-initdb.d),
-- as POSTGRES_USER: one database for MLflow's tracking store and one for the prediction log.
CREATE DATABASE mlflow;
CREATE DATABASE predictions;

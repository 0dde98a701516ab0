-- The application's own database, beside the two Temporal creates with its schema tool.
CREATE USER takeback WITH PASSWORD 'takeback';
CREATE DATABASE takeback OWNER takeback;

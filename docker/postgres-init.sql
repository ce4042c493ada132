-- Run once by the official postgres image on an empty data directory
-- (/docker-entrypoint-initdb.d). Written by `python -m devstack init-sql` from
-- devstack/databases.py, which devstack itself runs: do not edit by hand.

CREATE ROLE order_owner LOGIN PASSWORD 'order_owner';
ALTER ROLE order_owner SET idle_in_transaction_session_timeout = '10min';
CREATE ROLE order_svc LOGIN PASSWORD 'order_svc';
ALTER ROLE order_svc SET statement_timeout = '30s';
ALTER ROLE order_svc SET idle_in_transaction_session_timeout = '60s';
CREATE ROLE order_reader LOGIN PASSWORD 'order_reader';
ALTER ROLE order_reader SET statement_timeout = '30s';
ALTER ROLE order_reader SET idle_in_transaction_session_timeout = '60s';
CREATE DATABASE orders OWNER order_owner;
\connect orders
REVOKE ALL ON DATABASE orders FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE orders TO order_svc, order_reader;
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO order_svc, order_reader;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO order_svc;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO order_svc;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO order_reader;
ALTER DEFAULT PRIVILEGES FOR ROLE order_owner IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO order_svc;
ALTER DEFAULT PRIVILEGES FOR ROLE order_owner IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO order_svc;
ALTER DEFAULT PRIVILEGES FOR ROLE order_owner IN SCHEMA public GRANT SELECT ON TABLES TO order_reader;
\connect postgres

CREATE ROLE goods_owner LOGIN PASSWORD 'goods_owner';
ALTER ROLE goods_owner SET idle_in_transaction_session_timeout = '10min';
CREATE ROLE goods_svc LOGIN PASSWORD 'goods_svc';
ALTER ROLE goods_svc SET statement_timeout = '30s';
ALTER ROLE goods_svc SET idle_in_transaction_session_timeout = '60s';
CREATE ROLE goods_reader LOGIN PASSWORD 'goods_reader';
ALTER ROLE goods_reader SET statement_timeout = '30s';
ALTER ROLE goods_reader SET idle_in_transaction_session_timeout = '60s';
CREATE DATABASE goods OWNER goods_owner;
\connect goods
REVOKE ALL ON DATABASE goods FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE goods TO goods_svc, goods_reader;
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO goods_svc, goods_reader;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO goods_svc;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO goods_svc;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO goods_reader;
ALTER DEFAULT PRIVILEGES FOR ROLE goods_owner IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO goods_svc;
ALTER DEFAULT PRIVILEGES FOR ROLE goods_owner IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO goods_svc;
ALTER DEFAULT PRIVILEGES FOR ROLE goods_owner IN SCHEMA public GRANT SELECT ON TABLES TO goods_reader;
\connect postgres

CREATE ROLE order_history_owner LOGIN PASSWORD 'order_history_owner';
ALTER ROLE order_history_owner SET idle_in_transaction_session_timeout = '10min';
CREATE ROLE order_history_svc LOGIN PASSWORD 'order_history_svc';
ALTER ROLE order_history_svc SET statement_timeout = '60s';
ALTER ROLE order_history_svc SET idle_in_transaction_session_timeout = '60s';
CREATE ROLE order_history_reader LOGIN PASSWORD 'order_history_reader';
ALTER ROLE order_history_reader SET statement_timeout = '30s';
ALTER ROLE order_history_reader SET idle_in_transaction_session_timeout = '60s';
CREATE DATABASE order_history OWNER order_history_owner;
\connect order_history
REVOKE ALL ON DATABASE order_history FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE order_history TO order_history_svc, order_history_reader;
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO order_history_svc, order_history_reader;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO order_history_svc;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO order_history_svc;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO order_history_reader;
ALTER DEFAULT PRIVILEGES FOR ROLE order_history_owner IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO order_history_svc;
ALTER DEFAULT PRIVILEGES FOR ROLE order_history_owner IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO order_history_svc;
ALTER DEFAULT PRIVILEGES FOR ROLE order_history_owner IN SCHEMA public GRANT SELECT ON TABLES TO order_history_reader;
\connect postgres

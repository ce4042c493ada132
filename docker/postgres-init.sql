-- Run once by the official postgres image, on an empty data directory
-- (/docker-entrypoint-initdb.d). Mirrors devstack/postgres.py DATABASES:
-- one database per service, owned by that service's login role, whose
-- password equals its name (local development only).
CREATE ROLE order_svc LOGIN PASSWORD 'order_svc';
CREATE ROLE goods_svc LOGIN PASSWORD 'goods_svc';
CREATE ROLE order_history_svc LOGIN PASSWORD 'order_history_svc';

CREATE DATABASE orders OWNER order_svc;
CREATE DATABASE goods OWNER goods_svc;
CREATE DATABASE order_history OWNER order_history_svc;

-- Deploy utcp:projections to pg
-- requires: schema, roles
BEGIN;

-- Read models. Nothing writes them but the projection workers
-- (projections/), which derive them from utcp.stored_events and can
-- rebuild them from the log at any time. Every column, updated_at
-- included, comes from the log, so a rebuild gives identical rows.

CREATE TABLE utcp.trades (
    trade_id        text        NOT NULL,
    portfolio_id    text        NOT NULL,
    symbol          text        NOT NULL,
    side            text        NOT NULL,
    quantity        numeric     NOT NULL,
    price           numeric     NOT NULL,
    fees            numeric     NOT NULL,
    executed_at     timestamptz NOT NULL,
    order_id        text,
    status          text        NOT NULL,
    event_position  bigint      NOT NULL,  -- the TradeExecuted event in the log
    updated_at      timestamptz NOT NULL,  -- created_at of the last event that changed the row
    CONSTRAINT trades_pkey PRIMARY KEY (trade_id),
    CONSTRAINT trades_side CHECK (side IN ('buy', 'sell')),
    CONSTRAINT trades_status CHECK (status IN ('executed', 'cancelled'))
);
CREATE INDEX trades_symbol_time ON utcp.trades (symbol, executed_at);
CREATE INDEX trades_portfolio_time ON utcp.trades (portfolio_id, executed_at);
CREATE INDEX trades_time ON utcp.trades (executed_at);

CREATE TABLE utcp.positions (
    portfolio_id    text        NOT NULL,
    symbol          text        NOT NULL,
    quantity        numeric     NOT NULL,  -- signed: negative is short
    avg_cost        numeric     NOT NULL,  -- 0 when flat; see docs/trading-rules.md
    realized_pnl    numeric     NOT NULL,
    fees            numeric     NOT NULL,
    trade_count     integer     NOT NULL,
    updated_at      timestamptz NOT NULL,
    CONSTRAINT positions_pkey PRIMARY KEY (portfolio_id, symbol)
);

CREATE TABLE utcp.portfolios (
    portfolio_id    text        NOT NULL,
    name            text        NOT NULL,
    base_currency   text        NOT NULL,
    cash            numeric     NOT NULL,
    realized_pnl    numeric     NOT NULL,
    fees            numeric     NOT NULL,
    opened_at       timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    CONSTRAINT portfolios_pkey PRIMARY KEY (portfolio_id)
);

-- One row per projection: how far it has read the log (committed in the
-- same transaction as its table writes) and its last error.
CREATE TABLE utcp.projection_checkpoints (
    projection          text        NOT NULL,
    checkpoint_tx       xid8        NOT NULL DEFAULT '0',
    checkpoint_position bigint      NOT NULL DEFAULT 0,
    events_processed    bigint      NOT NULL DEFAULT 0,
    last_event_at       timestamptz,          -- created_at of the last event applied
    updated_at          timestamptz NOT NULL DEFAULT now(),
    last_error          text,
    last_error_at       timestamptz,
    last_error_event    uuid,
    CONSTRAINT projection_checkpoints_pkey PRIMARY KEY (projection)
);

-- The projector group owns the read models, so a worker (a member) can
-- rebuild them into shadow tables and swap them in without a superuser.
ALTER TABLE utcp.trades OWNER TO utcp_projector;
ALTER TABLE utcp.positions OWNER TO utcp_projector;
ALTER TABLE utcp.portfolios OWNER TO utcp_projector;
ALTER TABLE utcp.projection_checkpoints OWNER TO utcp_projector;
GRANT CREATE ON SCHEMA utcp TO utcp_projector;
GRANT SELECT ON utcp.trades, utcp.positions, utcp.portfolios, utcp.projection_checkpoints
    TO utcp_reader, utcp_writer;

COMMIT;

-- PA_SYS_MSG_IN as a PostgreSQL function: an example routing procedure for engage-listener
-- with a PostgreSQL store (<Store><Url>postgresql://...</Url></Store>).
--
-- In the original integration service, PA_SYS_MSG_IN was a stored procedure each
-- installation wrote to decide which inbox (queue / team) a new case goes to. Here it is a
-- function of the store's own database. Adapt this file and install it once, as the
-- database's owner (the role of the Url), e.g.:
--
--     psql "postgresql://engage@db.example.org/engage" -f pa_sys_msg_in.pgsql
--
-- then name it in the listener's block:
--
--     <RoutingHook>pg:engage_routing.pa_sys_msg_in</RoutingHook>
--     <RoutingTimeout>10</RoutingTimeout>
--
-- How it is called:
--   * For every mail that opens or joins a case, in the SAME transaction as the case, the
--     message and its attachments: if it fails or RoutingTimeout passes, all of it (its own
--     writes too) rolls back and the mail is retried later, then quarantined. No COMMIT.
--   * With named arguments, each cast to the type declared here; declare only those you
--     use (any of the sql: hooks' parameters works, e.g. text, new_text, to_addresses):
--       case_id bigint, message_id bigint (messages.id), customer_id bigint (NULL when
--       none), sender text, subject text, is_new_case boolean, listener text, process text
--   * Its result columns are the decision, from the first row: inbox text, priority integer,
--     tags (text, comma-separated, or text[]), acknowledge boolean; and also process, status
--     (open, closed, pending-approval), discard boolean, quarantine text (a reason). A
--     column left out, or NULL, changes nothing. A PROCEDURE works too: its OUT arguments
--     are the columns.
--   * Only one routine of that name may exist (no overloads).

CREATE SCHEMA IF NOT EXISTS engage_routing;

-- 1. The rules: an ordinary table, which operators edit with any PostgreSQL client.
CREATE TABLE IF NOT EXISTS engage_routing.routing_rules (
    keyword text PRIMARY KEY,            -- lower case; '*' is the default inbox
    inbox   text NOT NULL,
    weight  integer NOT NULL DEFAULT 0   -- when several keywords match, the heaviest wins
);

-- 2. A first set of rules; rules edited later by operators are kept.
INSERT INTO engage_routing.routing_rules (keyword, inbox, weight) VALUES
    ('factura',   'Facturacion', 20),
    ('pago',      'Facturacion', 10),
    ('cobro',     'Facturacion', 10),
    ('reclamo',   'Reclamos',    30),    -- "Reclamo por factura duplicada" goes to Reclamos
    ('reclamaci', 'Reclamos',    30),
    ('queja',     'Reclamos',    30),
    ('*',         'General',      0)
ON CONFLICT (keyword) DO NOTHING;

-- 3. VIP customers get their own inbox, without an acknowledgement mail.
CREATE TABLE IF NOT EXISTS engage_routing.vip_customers (customer_id bigint PRIMARY KEY);

-- 4. The routine. A NEW case is routed by its subject; a mail joining an open case leaves
--    the inbox alone (an agent may have moved the case on purpose). "Urgente" in the
--    subject raises the priority (1 = highest) for new cases and replies alike.
CREATE OR REPLACE FUNCTION engage_routing.pa_sys_msg_in(
    case_id bigint,
    message_id bigint,
    customer_id bigint,
    sender text,
    subject text,
    is_new_case boolean,
    listener text,
    process text
) RETURNS TABLE (inbox text, priority integer, tags text, acknowledge boolean)
LANGUAGE sql STABLE AS $fn$
    SELECT
        CASE
            WHEN vip.customer_id IS NOT NULL THEN 'VIP'
            WHEN is_new_case THEN coalesce(
                (SELECT r.inbox FROM engage_routing.routing_rules AS r
                  WHERE r.keyword <> '*' AND strpos(lower(subject), r.keyword) > 0
                  ORDER BY r.weight DESC, length(r.keyword) DESC LIMIT 1),
                (SELECT r.inbox FROM engage_routing.routing_rules AS r WHERE r.keyword = '*'),
                'General')
        END,
        CASE WHEN strpos(lower(subject), 'urgente') > 0 THEN 1 END,
        CASE WHEN strpos(lower(subject), 'urgente') > 0 THEN 'urgente' END,
        CASE WHEN vip.customer_id IS NOT NULL THEN false END
    FROM (SELECT 1) AS one
    LEFT JOIN engage_routing.vip_customers AS vip
        ON vip.customer_id = pa_sys_msg_in.customer_id
$fn$;

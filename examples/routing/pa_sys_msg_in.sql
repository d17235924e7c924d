-- PA_SYS_MSG_IN: an example routing procedure for engage-listener.
--
-- In the original integration service, PA_SYS_MSG_IN was a stored procedure each
-- installation wrote to decide which inbox (queue / team) a new case goes to. Copy this file
-- next to your configuration, adapt it, and name it in the listener's block:
--
--     <RoutingHook>sql:pa_sys_msg_in.sql</RoutingHook>
--     <RoutingTimeout>10</RoutingTimeout>
--
-- (a relative path is relative to the configuration file's directory).
--
-- How it runs:
--   * For every mail that opens or joins a case, the statements below run in order, inside
--     the SAME transaction as the case, the message and its attachments. If a statement fails
--     or RoutingTimeout passes, all of it (this procedure's writes too) rolls back and the
--     mail is retried later, then quarantined. So: no BEGIN, COMMIT or ROLLBACK here.
--   * The file is read and checked when the configuration is loaded (at start-up and on
--     reload): a syntax error or an unknown parameter stops the service with a clear message.
--   * Named parameters (each statement gets only those it uses):
--       :case_id       cases.id of the case           :case_number  its number
--       :message_id    messages.id of this mail       :customer_id  NULL when there is none
--       :sender        the sender's address           :sender_name  the sender's display name
--       :subject       this mail's subject            :text         its plain-text body
--       :is_new_case   1 if this mail opened the case, 0 if it joined an open one
--       :listener      the ImapListener ID            :process      its CaseProcess (or NULL)
--       :new_text      what the customer wrote, without quoted history and signature
--       :to_addresses, :cc_addresses, :reply_to   comma-separated, lower-cased addresses
--       :delivered_to  the address it was delivered to (Delivered-To, X-Original-To, ...)
--       :headers       JSON of every header: json_extract(:headers, '$."x-spam-flag"')
--       :attachments   JSON array of {name, type, size}: SELECT ... FROM json_each(:attachments)
--       :automatic     why it looks machine-made, or NULL
--       :rules_matched, :rules_inbox, :rules_priority, :rules_tags   what the listener's
--                      Rules decided before this procedure runs
--   * The procedure may change `cases` itself, as below, or write tables of its own. If the
--     LAST statement returns rows with columns named inbox, priority, tags (comma-separated),
--     acknowledge (0 or 1), process, status (open, closed, pending-approval), discard (0 or
--     1: keep the mail ignored, no case) or quarantine (a reason), the first row is applied
--     too (see the end of this file). A column left out, or NULL, changes nothing.


-- 1. The rules: an ordinary table, which operators edit with any SQLite client
--    (sqlite3 /var/lib/engage-listener/store.db "INSERT INTO routing_rules ...").
CREATE TABLE IF NOT EXISTS routing_rules (
    keyword TEXT PRIMARY KEY,           -- lower case; '*' is the default inbox
    inbox   TEXT NOT NULL,
    weight  INTEGER NOT NULL DEFAULT 0  -- when several keywords match, the heaviest wins
);

-- 2. A first set of rules. INSERT OR IGNORE: rules edited later by operators are kept.
--    SQLite's lower() folds only A-Z, so keep keywords free of accents: 'reclamaci' matches
--    both "Reclamación" and "RECLAMACIÓN".
INSERT OR IGNORE INTO routing_rules (keyword, inbox, weight) VALUES
    ('factura',   'Facturacion', 20),
    ('pago',      'Facturacion', 10),
    ('cobro',     'Facturacion', 10),
    ('reclamo',   'Reclamos',    30),   -- "Reclamo por factura duplicada" goes to Reclamos
    ('reclamaci', 'Reclamos',    30),
    ('queja',     'Reclamos',    30),
    ('*',         'General',      0);

-- 3. Route a NEW case by its subject. A mail joining an open case (:is_new_case = 0) leaves
--    the inbox alone: an agent may have moved the case on purpose.
UPDATE cases
   SET inbox = coalesce(
           (SELECT r.inbox
              FROM routing_rules AS r
             WHERE r.keyword <> '*'
               AND instr(lower(:subject), r.keyword) > 0
             ORDER BY r.weight DESC, length(r.keyword) DESC
             LIMIT 1),
           (SELECT r.inbox FROM routing_rules AS r WHERE r.keyword = '*'),
           'General'),
       updated_at = strftime('%Y-%m-%dT%H:%M:%S+00:00', 'now')
 WHERE id = :case_id
   AND :is_new_case = 1;

-- 4. "Urgente" anywhere in the subject or body raises the case's priority (1 = highest in
--    this installation), for new cases and for replies alike.
UPDATE cases
   SET priority = 1
 WHERE id = :case_id
   AND instr(lower(:subject || ' ' || :text), 'urgente') > 0;

-- 5. Optional: a last SELECT may return the decision instead of (or besides) the UPDATEs.
--    For example, VIP customers to their own inbox, without an acknowledgement mail:
--
-- SELECT 'VIP' AS inbox, 0 AS acknowledge
--  WHERE :customer_id IN (SELECT customer_id FROM vip_customers);

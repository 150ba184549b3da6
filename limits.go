package inbox

import (
	"fmt"
	"strconv"
	"time"
)

// Server-side limits of a claim. HandlerTimeout only cancels a handler's
// context; a handler that ignores it, or a client that vanishes without
// closing its socket, would keep the claim's locks and its open
// transaction forever. So every claim transaction sets, for itself only:
//
//   - idle_in_transaction_session_timeout and statement_timeout of
//     HandlerTimeout plus claimMargin: between two statements of a claim
//     runs at most one handler, so a claim idle for longer is stuck, and the
//     server ends its session, which rolls it back and frees its messages;
//   - TCP keepalives, so that the server notices a client gone without a
//     word (a half-open connection) in about a minute rather than the
//     kernel's two hours, and client_connection_check_interval (PostgreSQL
//     14 and later) for a statement running meanwhile.
//
// The values revert when the transaction ends, so the pool's connections
// are left as the application configured them.

// claimMargin is added to HandlerTimeout for the claim's server-side limits:
// room for the worker's own statements around a handler.
const claimMargin = 5 * time.Second

// Keepalive probes on a claim's connection: idle 20 s, then every 10 s,
// dead after 4 unanswered.
const (
	keepaliveIdle     = 20
	keepaliveInterval = 10
	keepaliveCount    = 4
	connectionCheckMS = 10000
)

// claimLimit is the server-side bound on a claim's idle time and on each of
// its statements.
func (c Config) claimLimit() time.Duration { return c.HandlerTimeout + claimMargin }

// setClaimLimits is the statement that sets them; $1 is claimLimit in
// milliseconds.
var setClaimLimits = fmt.Sprintf(`
SELECT set_config('idle_in_transaction_session_timeout', $1, true),
       set_config('statement_timeout', $1, true),
       set_config('tcp_keepalives_idle', '%d', true),
       set_config('tcp_keepalives_interval', '%d', true),
       set_config('tcp_keepalives_count', '%d', true),
       CASE WHEN current_setting('server_version_num')::int >= 140000
            THEN set_config('client_connection_check_interval', '%d', true) END`,
	keepaliveIdle, keepaliveInterval, keepaliveCount, connectionCheckMS)

func (c Config) claimLimitArg() string {
	return strconv.FormatInt(c.claimLimit().Milliseconds(), 10)
}

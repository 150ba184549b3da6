package amqp

// SetBeforeSettle installs a hook that runs between a batch's confirms and
// their recording. Call it before Run.
func SetBeforeSettle(r *Relay, f func()) { r.beforeSettle = f }

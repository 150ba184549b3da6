package amqp

// SetBeforeSettle installs a hook that runs between a batch's confirms and
// their recording, given the number of batches in flight (that one
// included). Call it before Run.
func SetBeforeSettle(r *Relay, f func(inFlight int)) { r.beforeSettle = f }

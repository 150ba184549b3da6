package inbox

import (
	"context"
	"log/slog"
)

// logger is a thin slog wrapper. Call sites pass IDs, topics and errors;
// never message bodies or connection strings.
type logger struct{ l *slog.Logger }

func (l logger) info(msg string, args ...any)  { l.l.Info(msg, args...) }
func (l logger) warn(msg string, args ...any)  { l.l.Warn(msg, args...) }
func (l logger) error(msg string, args ...any) { l.l.Error(msg, args...) }
func (l logger) debug(msg string, args ...any) {
	l.l.Log(context.Background(), slog.LevelDebug, msg, args...)
}

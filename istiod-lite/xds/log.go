package xds

import (
	"context"
	"fmt"
	"log/slog"

	gcplog "github.com/envoyproxy/go-control-plane/pkg/log"
)

// levelTrace is below slog.LevelDebug. go-control-plane's Debugf lines go
// there: some format a client's whole version map (10k entries) while the
// cache lock is held, so they must stay off unless asked for explicitly.
const levelTrace = slog.LevelDebug - 4

// gcpLogger adapts slog to go-control-plane's logger. Its Infof lines (one
// per watch opened) go to Debug.
type gcpLogger struct{ l *slog.Logger }

var _ gcplog.Logger = gcpLogger{}

func (g gcpLogger) logf(level slog.Level, format string, args []any) {
	ctx := context.Background()
	if !g.l.Enabled(ctx, level) {
		return
	}
	g.l.Log(ctx, level, fmt.Sprintf(format, args...))
}

func (g gcpLogger) Debugf(format string, args ...any) { g.logf(levelTrace, format, args) }
func (g gcpLogger) Infof(format string, args ...any)  { g.logf(slog.LevelDebug, format, args) }
func (g gcpLogger) Warnf(format string, args ...any)  { g.logf(slog.LevelWarn, format, args) }
func (g gcpLogger) Errorf(format string, args ...any) { g.logf(slog.LevelError, format, args) }

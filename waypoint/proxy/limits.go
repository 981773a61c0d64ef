package proxy

import (
	"errors"
	"fmt"
	"time"

	"github.com/spf13/pflag"
)

// Limits bound what one client can make the waypoint hold. Every field is
// a flag of the waypoint (RegisterFlags); a zero field takes its default.
type Limits struct {
	// MaxHeaderBytes bounds a request's line and headers together (HTTP/1.1
	// answers 431 beyond it; HTTP/2 refuses the header block). Envoy's
	// default is 60 KiB.
	MaxHeaderBytes int
	// MaxRequestLineBytes bounds the method, target and protocol of a
	// request: 414 beyond it.
	MaxRequestLineBytes int
	// ReadHeaderTimeout bounds the time to read a request's headers.
	ReadHeaderTimeout time.Duration
	// IdleTimeout closes a client connection without a request that long.
	IdleTimeout time.Duration
	// MaxConcurrentStreams bounds the requests in flight on one HTTP/2
	// client connection (an HTTP/1.1 connection has one at a time).
	MaxConcurrentStreams int
	// MaxBufferedBodyBytes bounds the part of a request body kept to
	// replay it on a retry or send it to a mirror. A body longer than that
	// is streamed and not retried (nor mirrored).
	MaxBufferedBodyBytes int
	// MirrorQueue bounds the mirrored requests waiting for a worker;
	// beyond it a mirror is dropped (never the request itself).
	MirrorQueue int
	// MirrorWorkers is the number of mirrored requests sent at once.
	MirrorWorkers int
	// MirrorTimeout bounds one mirrored request.
	MirrorTimeout time.Duration
}

// DefaultLimits are the waypoint's defaults.
func DefaultLimits() Limits {
	return Limits{
		MaxHeaderBytes:       60 << 10,
		MaxRequestLineBytes:  16 << 10,
		ReadHeaderTimeout:    10 * time.Second,
		IdleTimeout:          15 * time.Minute,
		MaxConcurrentStreams: 100,
		MaxBufferedBodyBytes: 64 << 10,
		MirrorQueue:          64,
		MirrorWorkers:        4,
		MirrorTimeout:        10 * time.Second,
	}
}

// RegisterFlags adds a flag for each limit, with l's values as defaults.
func (l *Limits) RegisterFlags(fs *pflag.FlagSet) {
	fs.IntVar(&l.MaxHeaderBytes, "max-header-bytes", l.MaxHeaderBytes, "largest request line and headers of one request, in bytes (431 beyond)")
	fs.IntVar(&l.MaxRequestLineBytes, "max-request-line-bytes", l.MaxRequestLineBytes, "longest request line (method, target, protocol), in bytes (414 beyond)")
	fs.DurationVar(&l.ReadHeaderTimeout, "read-header-timeout", l.ReadHeaderTimeout, "time allowed to read a request's headers")
	fs.DurationVar(&l.IdleTimeout, "http-idle-timeout", l.IdleTimeout, "close a client connection idle (between requests) this long")
	fs.IntVar(&l.MaxConcurrentStreams, "max-concurrent-streams", l.MaxConcurrentStreams, "requests in flight on one HTTP/2 client connection")
	fs.IntVar(&l.MaxBufferedBodyBytes, "max-buffered-body-bytes", l.MaxBufferedBodyBytes, "request body bytes kept to retry or mirror a request; a longer body is neither retried nor mirrored")
	fs.IntVar(&l.MirrorQueue, "mirror-queue", l.MirrorQueue, "mirrored requests waiting to be sent; more are dropped")
	fs.IntVar(&l.MirrorWorkers, "mirror-workers", l.MirrorWorkers, "mirrored requests sent at once")
	fs.DurationVar(&l.MirrorTimeout, "mirror-timeout", l.MirrorTimeout, "time allowed to one mirrored request")
}

func (l Limits) withDefaults() Limits {
	d := DefaultLimits()
	set := func(v *int, def int) {
		if *v == 0 {
			*v = def
		}
	}
	setD := func(v *time.Duration, def time.Duration) {
		if *v == 0 {
			*v = def
		}
	}
	set(&l.MaxHeaderBytes, d.MaxHeaderBytes)
	set(&l.MaxRequestLineBytes, d.MaxRequestLineBytes)
	setD(&l.ReadHeaderTimeout, d.ReadHeaderTimeout)
	setD(&l.IdleTimeout, d.IdleTimeout)
	set(&l.MaxConcurrentStreams, d.MaxConcurrentStreams)
	set(&l.MaxBufferedBodyBytes, d.MaxBufferedBodyBytes)
	set(&l.MirrorQueue, d.MirrorQueue)
	set(&l.MirrorWorkers, d.MirrorWorkers)
	setD(&l.MirrorTimeout, d.MirrorTimeout)
	return l
}

// Validate refuses negative limits.
func (l Limits) Validate() error {
	var errs []error
	for name, v := range map[string]int64{
		"max-header-bytes":        int64(l.MaxHeaderBytes),
		"max-request-line-bytes":  int64(l.MaxRequestLineBytes),
		"read-header-timeout":     int64(l.ReadHeaderTimeout),
		"http-idle-timeout":       int64(l.IdleTimeout),
		"max-concurrent-streams":  int64(l.MaxConcurrentStreams),
		"max-buffered-body-bytes": int64(l.MaxBufferedBodyBytes),
		"mirror-queue":            int64(l.MirrorQueue),
		"mirror-workers":          int64(l.MirrorWorkers),
		"mirror-timeout":          int64(l.MirrorTimeout),
	} {
		if v < 0 {
			errs = append(errs, fmt.Errorf("--%s must not be negative", name))
		}
	}
	return errors.Join(errs...)
}

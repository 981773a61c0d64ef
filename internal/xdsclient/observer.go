package xdsclient

import "time"

// Observer is told what the client does, for metrics. Its methods are
// called synchronously from Run's goroutine, so they must be fast and must
// not block. Embed NopObserver to implement only some of them.
type Observer interface {
	// Connected: a stream opened and the subscriptions were sent.
	Connected()
	// Disconnected: the stream of the last Connected ended, after
	// connectedFor; err is nil when Run's context ended.
	Disconnected(err error, connectedFor time.Duration)
	// Retrying: an attempt failed with err (opening the stream, or the
	// stream itself); the client waits delay before the next one. failures
	// counts the consecutive failed attempts since the back-off was last
	// reset.
	Retrying(failures int, delay time.Duration, err error)
	// ACK: a response of typeURL was accepted, with its counts of updated
	// and removed resources.
	ACK(typeURL string, updated, removed int)
	// NACK: a response of typeURL was rejected for reason.
	NACK(typeURL string, reason error)
}

// NopObserver ignores everything.
type NopObserver struct{}

var _ Observer = NopObserver{}

// Connected does nothing.
func (NopObserver) Connected() {}

// Disconnected does nothing.
func (NopObserver) Disconnected(error, time.Duration) {}

// Retrying does nothing.
func (NopObserver) Retrying(int, time.Duration, error) {}

// ACK does nothing.
func (NopObserver) ACK(string, int, int) {}

// NACK does nothing.
func (NopObserver) NACK(string, error) {}

package kubeclient

import (
	"errors"
	"fmt"
	"net/http"
)

// StatusError is a request the API server answered with an error: its
// HTTP code and, from the metav1.Status body, its reason and message.
// Watches report errors the same way, inside the stream.
type StatusError struct {
	Code    int
	Reason  string // e.g. NotFound, Expired, Gone, Forbidden
	Message string
}

func (e *StatusError) Error() string {
	msg := e.Message
	if msg == "" {
		msg = http.StatusText(e.Code)
	}
	if e.Reason != "" {
		return fmt.Sprintf("API server: %s (%d %s)", msg, e.Code, e.Reason)
	}
	return fmt.Sprintf("API server: %s (%d)", msg, e.Code)
}

// status is the part of metav1.Status that errors carry.
type status struct {
	Kind    string `json:"kind"`
	Status  string `json:"status"`
	Message string `json:"message"`
	Reason  string `json:"reason"`
	Code    int    `json:"code"`
}

func (s status) err(httpCode int) *StatusError {
	code := s.Code
	if code == 0 {
		code = httpCode
	}
	return &StatusError{Code: code, Reason: s.Reason, Message: s.Message}
}

// IsNotFound reports whether err says the object does not exist.
func IsNotFound(err error) bool { return hasCode(err, http.StatusNotFound) }

// IsGone reports whether err says that a resource version is too old to
// list or watch from (410 Gone, reason Expired or Gone): the caller must
// list again from the current state.
func IsGone(err error) bool { return hasCode(err, http.StatusGone) }

// IsUnauthorized reports whether the server refused the credentials.
func IsUnauthorized(err error) bool { return hasCode(err, http.StatusUnauthorized) }

func hasCode(err error, code int) bool {
	var se *StatusError
	return errors.As(err, &se) && se.Code == code
}

package xdsclient

import (
	"errors"
	"fmt"
	"maps"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	xdsv1 "github.com/cairnmesh/cairn/apis/xdsclient/v1"
)

// maxReported bounds how many bad resources a NACK names, so that its
// message stays readable (and small) when a whole response is bad.
const maxReported = 5

// decode turns a response into an Update and the versions of its
// resources. Any resource that cannot be decoded fails the whole response:
// applying the rest would leave the handler with a state the control plane
// never had.
func (t *typeState) decode(resp *xdsv1.DeltaDiscoveryResponse) (Update, map[string]string, error) {
	u := Update{
		TypeURL:       t.url,
		Resources:     make(map[string]proto.Message, len(resp.GetResources())),
		Removed:       resp.GetRemovedResources(),
		SystemVersion: resp.GetSystemVersionInfo(),
	}
	versions := make(map[string]string, len(resp.GetResources()))
	var errs []error
	bad := 0
	fail := func(err error) {
		bad++
		if bad <= maxReported {
			errs = append(errs, err)
		}
	}
	for _, r := range resp.GetResources() {
		name := r.GetName()
		if name == "" {
			fail(errors.New("a resource has no name"))
			continue
		}
		if _, dup := u.Resources[name]; dup {
			fail(fmt.Errorf("resource %q is sent twice", name))
			continue
		}
		msg, err := t.unmarshal(r.GetResource())
		if err != nil {
			fail(fmt.Errorf("resource %q: %w", name, err))
			continue
		}
		u.Resources[name] = msg
		versions[name] = r.GetVersion()
	}
	for _, name := range u.Removed {
		if _, both := u.Resources[name]; both {
			fail(fmt.Errorf("resource %q is both updated and removed", name))
		}
	}
	if bad > maxReported {
		errs = append(errs, fmt.Errorf("and %d more bad resources", bad-maxReported))
	}
	if len(errs) > 0 {
		return Update{}, nil, errors.Join(errs...)
	}
	return u, versions, nil
}

func (t *typeState) unmarshal(a *anypb.Any) (proto.Message, error) {
	if a == nil {
		return nil, errors.New("no body")
	}
	if a.GetTypeUrl() != t.url {
		return nil, fmt.Errorf("body is a %s, not a %s", a.GetTypeUrl(), t.url)
	}
	msg := t.newMsg()
	if err := proto.Unmarshal(a.GetValue(), msg); err != nil {
		return nil, fmt.Errorf("decoding: %w", err)
	}
	return msg, nil
}

// commit records what the handler accepted.
func (t *typeState) commit(versions map[string]string, removed []string) {
	maps.Copy(t.versions, versions)
	for _, name := range removed {
		delete(t.versions, name)
	}
}

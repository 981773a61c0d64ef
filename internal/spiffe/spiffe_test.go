package spiffe

import (
	"crypto/x509"
	"encoding/json"
	"errors"
	"net/url"
	"testing"
)

func TestParse(t *testing.T) {
	tests := []struct {
		in      string
		want    Identity
		wantErr bool
	}{
		{in: "spiffe://cluster.local/ns/default/sa/web", want: Identity{"cluster.local", "default", "web"}},
		{in: "spiffe://example.org/ns/a-b/sa/c.d_e", want: Identity{"example.org", "a-b", "c.d_e"}},
		{in: "spiffe://cluster.local", wantErr: true},
		{in: "spiffe://cluster.local/ns/default", wantErr: true},
		{in: "spiffe://cluster.local/ns/default/sa", wantErr: true},
		{in: "spiffe://cluster.local/ns/default/sa/web/extra", wantErr: true},
		{in: "spiffe://cluster.local/sa/web/ns/default", wantErr: true},
		{in: "spiffe://cluster.local/ns//sa/web", wantErr: true},
		{in: "spiffe://Cluster.Local/ns/default/sa/web", wantErr: true}, // upper case trust domain
		{in: "spiffe://cluster.local/ns/default/sa/web/", wantErr: true},
		{in: "https://cluster.local/ns/default/sa/web", wantErr: true},
		{in: "spiffe://user@cluster.local/ns/default/sa/web", wantErr: true},
		{in: "spiffe://cluster.local:8443/ns/default/sa/web", wantErr: true},
		{in: "spiffe://cluster.local/ns/default/sa/web?x=1", wantErr: true},
		{in: "", wantErr: true},
	}
	for _, tc := range tests {
		got, err := Parse(tc.in)
		if tc.wantErr {
			if err == nil {
				t.Errorf("Parse(%q) = %+v, want an error", tc.in, got)
			}
			continue
		}
		if err != nil {
			t.Errorf("Parse(%q): %v", tc.in, err)
			continue
		}
		if got != tc.want {
			t.Errorf("Parse(%q) = %+v, want %+v", tc.in, got, tc.want)
		}
		if got.String() != tc.in {
			t.Errorf("String() = %q, want %q", got.String(), tc.in)
		}
		if id := got.RequireID(); id.String() != tc.in {
			t.Errorf("ID() = %q, want %q", id, tc.in)
		}
	}
}

func TestNotWorkloadID(t *testing.T) {
	_, err := Parse("spiffe://cluster.local/other/path")
	if !errors.Is(err, ErrNotWorkloadID) {
		t.Fatalf("got %v, want ErrNotWorkloadID", err)
	}
}

func TestNew(t *testing.T) {
	if _, err := New("cluster.local", "default", "web"); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []Identity{
		{"", "default", "web"},
		{"cluster.local", "", "web"},
		{"cluster.local", "default", ""},
		{"cluster.local", "a/b", "web"},
		{"bad domain", "default", "web"},
	} {
		if _, err := New(bad.TrustDomain, bad.Namespace, bad.ServiceAccount); err == nil {
			t.Errorf("New(%+v) succeeded", bad)
		}
	}
}

func TestFromCert(t *testing.T) {
	u := func(s string) *url.URL {
		v, err := url.Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	good := &x509.Certificate{URIs: []*url.URL{u("spiffe://cluster.local/ns/ns1/sa/sa1")}}
	got, err := FromCert(good)
	if err != nil || got != (Identity{"cluster.local", "ns1", "sa1"}) {
		t.Fatalf("FromCert = %+v, %v", got, err)
	}
	for name, c := range map[string]*x509.Certificate{
		"nil":     nil,
		"no URI":  {},
		"two URI": {URIs: []*url.URL{u("spiffe://cluster.local/ns/a/sa/b"), u("spiffe://cluster.local/ns/c/sa/d")}},
		"https":   {URIs: []*url.URL{u("https://cluster.local/ns/a/sa/b")}},
		"no path": {URIs: []*url.URL{u("spiffe://cluster.local")}},
	} {
		if _, err := FromCert(c); err == nil {
			t.Errorf("%s: FromCert succeeded", name)
		}
	}
}

func TestIdentityInJSONIsItsSPIFFEID(t *testing.T) {
	id, err := New("cluster.local", "shop", "reviews")
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(map[string]Identity{"id": id, "none": {}})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := string(b), `{"id":"spiffe://cluster.local/ns/shop/sa/reviews","none":""}`; got != want {
		t.Errorf("JSON %s, want %s", got, want)
	}
}

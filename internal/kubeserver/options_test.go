package kubeserver

import (
	"net"
	"os"
	"path/filepath"
	"testing"
)

func TestServiceIP(t *testing.T) {
	for _, tc := range []struct {
		cidr string
		want string // "" means an error
	}{
		{"198.19.0.0/20", "198.19.0.1"},
		{"198.19.0.0/16", "198.19.0.1"},
		{"198.19.128.0/24", "198.19.128.1"},
		{"198.18.0.0/16", ""}, // the pod range, not for services
		{"10.96.0.0/16", ""},
		{"192.168.0.0/24", ""},
		{"198.0.0.0/8", ""},   // contains the allowed range but is far bigger
		{"198.19.0.1/24", ""}, // host bits set
		{"198.19.0.0/31", ""}, // too small
		{"fd00::/108", ""},    // IPv4 only
		{"not-a-cidr", ""},
	} {
		got, err := serviceIP(tc.cidr)
		switch {
		case tc.want == "" && err == nil:
			t.Errorf("serviceIP(%s) = %v, want an error", tc.cidr, got)
		case tc.want != "" && err != nil:
			t.Errorf("serviceIP(%s): %v", tc.cidr, err)
		case tc.want != "" && !got.Equal(net.ParseIP(tc.want)):
			t.Errorf("serviceIP(%s) = %v, want %s", tc.cidr, got, tc.want)
		}
	}
}

func TestOptionsDefaults(t *testing.T) {
	o, err := Options{Dir: "rel", BinDir: "/bin"}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if !filepath.IsAbs(o.Dir) {
		t.Errorf("Dir %q not made absolute", o.Dir)
	}
	if !o.BindAddress.Equal(net.IPv4(127, 0, 0, 1)) || !o.AdvertiseAddress.Equal(o.BindAddress) {
		t.Errorf("bind %v advertise %v", o.BindAddress, o.AdvertiseAddress)
	}
	if o.ServiceCIDR != DefaultServiceCIDR || len(o.APIAudiences) != 1 || o.APIAudiences[0] != DefaultServiceAccountIssuer {
		t.Errorf("service CIDR %q audiences %q", o.ServiceCIDR, o.APIAudiences)
	}
	if o.Controllers != nil {
		t.Errorf("controllers %v set without ControllerManager", o.Controllers)
	}

	o, err = Options{Dir: "/d", BinDir: "/b", BindAddress: net.IPv4zero, ControllerManager: true}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if !o.AdvertiseAddress.Equal(net.IPv4(127, 0, 0, 1)) {
		t.Errorf("advertise for 0.0.0.0 = %v, want 127.0.0.1", o.AdvertiseAddress)
	}
	if len(o.Controllers) != len(DefaultControllers) {
		t.Errorf("controllers = %v", o.Controllers)
	}

	for _, bad := range []Options{
		{BinDir: "/b"},
		{Dir: "/d"},
		{Dir: "/d", BinDir: "/b", ServiceCIDR: "10.0.0.0/24"},
		{Dir: "/d", BinDir: "/b", SecurePort: 70000},
	} {
		if _, err := bad.withDefaults(); err == nil {
			t.Errorf("%+v accepted", bad)
		}
	}
}

func TestCheckBinaries(t *testing.T) {
	dir := t.TempDir()
	opts := Options{BinDir: dir, ControllerManager: true}
	if err := CheckBinaries(opts); err == nil {
		t.Fatal("empty directory accepted")
	}
	for _, b := range []string{Etcd, APIServer, ControllerManager} {
		if err := os.WriteFile(filepath.Join(dir, b), []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := CheckBinaries(opts); err != nil {
		t.Fatal(err)
	}
	opts.Scheduler = true
	if err := CheckBinaries(opts); err == nil {
		t.Fatal("missing kube-scheduler not reported")
	}
}

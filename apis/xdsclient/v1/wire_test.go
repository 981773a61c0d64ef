package xdsclientv1

import (
	"testing"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
)

// envoyMessages maps each message of this package to the message of
// Envoy's API (or of a well-known type) it stands for on the wire. It is a
// function because descriptors are built by the generated code's init,
// after package variables are.
func envoyMessages() map[protoreflect.FullName]protoreflect.MessageDescriptor {
	return map[protoreflect.FullName]protoreflect.MessageDescriptor{
		(&DeltaDiscoveryRequest{}).ProtoReflect().Descriptor().FullName():  (&discoverygrpc.DeltaDiscoveryRequest{}).ProtoReflect().Descriptor(),
		(&DeltaDiscoveryResponse{}).ProtoReflect().Descriptor().FullName(): (&discoverygrpc.DeltaDiscoveryResponse{}).ProtoReflect().Descriptor(),
		(&Resource{}).ProtoReflect().Descriptor().FullName():               (&discoverygrpc.Resource{}).ProtoReflect().Descriptor(),
		(&Node{}).ProtoReflect().Descriptor().FullName():                   (&core.Node{}).ProtoReflect().Descriptor(),
		(&Metadata{}).ProtoReflect().Descriptor().FullName():               (&structpb.Struct{}).ProtoReflect().Descriptor(),
		(&MetadataValue{}).ProtoReflect().Descriptor().FullName():          (&structpb.Value{}).ProtoReflect().Descriptor(),
		(&Status{}).ProtoReflect().Descriptor().FullName():                 (&rpcstatus.Status{}).ProtoReflect().Descriptor(),
	}
}

// TestWireMatchesEnvoy checks every field of every message against the
// Envoy field of the same number: same name, same wire kind, same
// cardinality and presence, and, for message fields, a message that stands
// for Envoy's in turn. A wrong number shows up as a different name.
func TestWireMatchesEnvoy(t *testing.T) {
	envoyOf := envoyMessages()
	msgs := File_apis_xdsclient_v1_xdsclient_proto.Messages()
	if msgs.Len() != len(envoyOf) {
		t.Fatalf("the proto has %d messages and envoyOf maps %d: map every message", msgs.Len(), len(envoyOf))
	}
	for i := range msgs.Len() {
		ours := msgs.Get(i)
		theirs, ok := envoyOf[ours.FullName()]
		if !ok {
			t.Errorf("%s: not in envoyOf", ours.FullName())
			continue
		}
		fields := ours.Fields()
		for j := range fields.Len() {
			checkField(t, envoyOf, fields.Get(j), theirs)
		}
	}
}

func checkField(t *testing.T, envoyOf map[protoreflect.FullName]protoreflect.MessageDescriptor, f protoreflect.FieldDescriptor, envoy protoreflect.MessageDescriptor) {
	t.Helper()
	e := envoy.Fields().ByNumber(f.Number())
	where := string(f.FullName())
	switch {
	case e == nil:
		t.Errorf("%s: %s has no field %d", where, envoy.FullName(), f.Number())
		return
	case e.Name() != f.Name():
		t.Errorf("%s: field %d of %s is %s", where, f.Number(), envoy.FullName(), e.Name())
	case e.Kind() != f.Kind():
		t.Errorf("%s: kind %v, %s is %v", where, f.Kind(), e.FullName(), e.Kind())
	case e.Cardinality() != f.Cardinality() || e.IsMap() != f.IsMap():
		t.Errorf("%s: cardinality %v (map %v), %s has %v (map %v)", where, f.Cardinality(), f.IsMap(), e.FullName(), e.Cardinality(), e.IsMap())
	case e.HasPresence() != f.HasPresence():
		t.Errorf("%s: presence %v, %s has %v", where, f.HasPresence(), e.FullName(), e.HasPresence())
	}
	if f.IsMap() && e.IsMap() {
		checkField(t, envoyOf, f.MapKey(), e.MapKey().ContainingMessage())
		checkField(t, envoyOf, f.MapValue(), e.MapValue().ContainingMessage())
		return
	}
	if f.Message() == nil || e.Message() == nil {
		return
	}
	want := e.Message().FullName()
	if got, ok := envoyOf[f.Message().FullName()]; ok {
		if got.FullName() != want {
			t.Errorf("%s: a %s, which stands for %s; %s is a %s", where, f.Message().FullName(), got.FullName(), e.FullName(), want)
		}
	} else if f.Message().FullName() != want {
		t.Errorf("%s: a %s, %s is a %s", where, f.Message().FullName(), e.FullName(), want)
	}
}

// crossDecode marshals from and unmarshals the bytes into a new message of
// want's type, which must then equal want. Fields of from that the target
// does not know are dropped only when discard is set; otherwise they would
// stay as unknown fields and fail the comparison, which is how a field the
// target misnumbers shows up.
func crossDecode(t *testing.T, from, want proto.Message, discard bool) {
	t.Helper()
	b, err := proto.Marshal(from)
	if err != nil {
		t.Fatalf("marshaling %T: %v", from, err)
	}
	got := want.ProtoReflect().New().Interface()
	if err := (proto.UnmarshalOptions{DiscardUnknown: discard}).Unmarshal(b, got); err != nil {
		t.Fatalf("unmarshaling %T as %T: %v", from, got, err)
	}
	if !proto.Equal(got, want) {
		t.Errorf("%T decoded as %T:\n%s\nwant:\n%s", from, got, prototext.Format(got), prototext.Format(want))
	}
}

// body is a resource as istiod-lite sends it: any message in an Any.
func body(t *testing.T) *anypb.Any {
	t.Helper()
	a, err := anypb.New(&structpb.Value{Kind: &structpb.Value_StringValue{StringValue: "a workload"}})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// TestRequestsDecodeAsEnvoys: a request of every field ztunnel sends,
// marshaled here, is the same request to Envoy's types, and back.
func TestRequestsDecodeAsEnvoys(t *testing.T) {
	ours := []*DeltaDiscoveryRequest{
		{ // the first subscription of a stream, after a reconnect
			Node: &Node{
				Id:               "worker-1~ztunnel-x7k2p.cairn-system",
				UserAgentName:    "cairn-ztunnel",
				UserAgentVersion: proto.String("v1.2.3"),
				Metadata: &Metadata{Fields: map[string]*MetadataValue{
					"NODE_NAME": {StringValue: proto.String("worker-1")},
					"EMPTY":     {StringValue: proto.String("")},
				}},
			},
			TypeUrl:                 "type.googleapis.com/cairn.workload.v1.Address",
			ResourceNamesSubscribe:  []string{"*"},
			InitialResourceVersions: map[string]string{"w1": "v1", "shop/web": "v2"},
		},
		{ // a NACK
			TypeUrl:       "type.googleapis.com/cairn.workload.v1.Authorization",
			ResponseNonce: "nonce-7",
			ErrorDetail:   &Status{Code: 3, Message: `resource "w9": decoding`},
		},
		{ // a node with an empty version, which is still sent
			Node: &Node{Id: "n", UserAgentVersion: proto.String("")},
		},
	}
	envoys := []*discoverygrpc.DeltaDiscoveryRequest{
		{
			Node: &core.Node{
				Id:                   "worker-1~ztunnel-x7k2p.cairn-system",
				UserAgentName:        "cairn-ztunnel",
				UserAgentVersionType: &core.Node_UserAgentVersion{UserAgentVersion: "v1.2.3"},
				Metadata: &structpb.Struct{Fields: map[string]*structpb.Value{
					"NODE_NAME": structpb.NewStringValue("worker-1"),
					"EMPTY":     structpb.NewStringValue(""),
				}},
			},
			TypeUrl:                 "type.googleapis.com/cairn.workload.v1.Address",
			ResourceNamesSubscribe:  []string{"*"},
			InitialResourceVersions: map[string]string{"w1": "v1", "shop/web": "v2"},
		},
		{
			TypeUrl:       "type.googleapis.com/cairn.workload.v1.Authorization",
			ResponseNonce: "nonce-7",
			ErrorDetail:   &rpcstatus.Status{Code: 3, Message: `resource "w9": decoding`},
		},
		{
			Node: &core.Node{Id: "n", UserAgentVersionType: &core.Node_UserAgentVersion{}},
		},
	}
	for i := range ours {
		crossDecode(t, ours[i], envoys[i], false)
		crossDecode(t, envoys[i], ours[i], false)
	}
}

// TestResponsesDecodeFromEnvoys: a response marshaled with Envoy's types is
// the same response here, and back; fields Envoy has and these messages
// leave out are skipped.
func TestResponsesDecodeFromEnvoys(t *testing.T) {
	a := body(t)
	envoy := &discoverygrpc.DeltaDiscoveryResponse{
		SystemVersionInfo: "42",
		TypeUrl:           "type.googleapis.com/cairn.workload.v1.Address",
		Nonce:             "nonce-8",
		Resources: []*discoverygrpc.Resource{
			{Name: "w1", Version: "v1", Resource: a},
			{Name: "w2", Version: "v2", Resource: a},
		},
		RemovedResources: []string{"w3", "shop/web"},
	}
	ours := &DeltaDiscoveryResponse{
		SystemVersionInfo: "42",
		TypeUrl:           "type.googleapis.com/cairn.workload.v1.Address",
		Nonce:             "nonce-8",
		Resources: []*Resource{
			{Name: "w1", Version: "v1", Resource: a},
			{Name: "w2", Version: "v2", Resource: a},
		},
		RemovedResources: []string{"w3", "shop/web"},
	}
	crossDecode(t, envoy, ours, false)
	crossDecode(t, ours, envoy, false)

	// What a server could add beyond the subset: skipped, and the rest
	// still decodes.
	full := proto.CloneOf(envoy)
	full.Resources[0].Aliases = []string{"alias"}
	full.Resources[0].Ttl = durationpb.New(5)
	full.Resources[0].CacheControl = &discoverygrpc.Resource_CacheControl{DoNotCache: true}
	full.ControlPlane = &core.ControlPlane{Identifier: "istiod-lite"}
	full.RemovedResourceNames = []*discoverygrpc.ResourceName{{Name: "w3"}}
	full.ResourceErrors = []*discoverygrpc.ResourceError{{ResourceName: &discoverygrpc.ResourceName{Name: "w4"}}}
	crossDecode(t, full, ours, true)
}

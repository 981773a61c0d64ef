package state

import (
	"encoding/base64"
	"encoding/json"
	"maps"
	"net/netip"
	"slices"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// MarshalJSON renders the snapshot for the admin endpoint /config_dump:
//
//	{"workloads": [...], "services": [...], "authorizations": [...]}
//
// each list sorted by xDS name. Fields have protojson's names, but the dump
// is for people, not for parsing back: 4- and 16-byte fields (addresses,
// CIDRs) are shown as IPs rather than base64, enums by name, and singular
// scalars and enums even when zero, since an absent "status" would hide
// that a workload is HEALTHY.
func (s *Snapshot) MarshalJSON() ([]byte, error) {
	dump := struct {
		Workloads      []any `json:"workloads"`
		Services       []any `json:"services"`
		Authorizations []any `json:"authorizations"`
	}{
		Workloads:      dumpAll(s.workloads),
		Services:       dumpAll(s.services),
		Authorizations: dumpAll(s.authorizations),
	}
	return json.Marshal(dump)
}

func dumpAll[M proto.Message](m map[string]M) []any {
	out := make([]any, 0, len(m))
	for _, name := range slices.Sorted(maps.Keys(m)) {
		out = append(out, dumpMessage(m[name].ProtoReflect()))
	}
	return out
}

func dumpMessage(m protoreflect.Message) map[string]any {
	out := map[string]any{}
	fields := m.Descriptor().Fields()
	for i := range fields.Len() {
		fd := fields.Get(i)
		switch {
		case fd.IsList():
			l := m.Get(fd).List()
			if l.Len() == 0 {
				continue
			}
			vals := make([]any, l.Len())
			for j := range l.Len() {
				vals[j] = dumpValue(fd, l.Get(j))
			}
			out[fd.JSONName()] = vals
		case fd.IsMap():
			mp := m.Get(fd).Map()
			if mp.Len() == 0 {
				continue
			}
			vals := map[string]any{}
			mp.Range(func(k protoreflect.MapKey, v protoreflect.Value) bool {
				vals[k.String()] = dumpValue(fd.MapValue(), v)
				return true
			})
			out[fd.JSONName()] = vals
		case fd.Message() != nil || fd.ContainingOneof() != nil:
			if m.Has(fd) {
				out[fd.JSONName()] = dumpValue(fd, m.Get(fd))
			}
		default:
			out[fd.JSONName()] = dumpValue(fd, m.Get(fd))
		}
	}
	return out
}

func dumpValue(fd protoreflect.FieldDescriptor, v protoreflect.Value) any {
	switch fd.Kind() {
	case protoreflect.MessageKind, protoreflect.GroupKind:
		return dumpMessage(v.Message())
	case protoreflect.EnumKind:
		if ev := fd.Enum().Values().ByNumber(v.Enum()); ev != nil {
			return string(ev.Name())
		}
		return int32(v.Enum())
	case protoreflect.BytesKind:
		b := v.Bytes()
		if ip, ok := netip.AddrFromSlice(b); ok {
			return ip.Unmap().String()
		}
		return base64.StdEncoding.EncodeToString(b)
	}
	return v.Interface()
}

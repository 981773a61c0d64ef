//lint:file-ignore SA1019 HBONE is built on golang.org/x/net/http2 (a required library), whose types v0.62 marks deprecated in favour of net/http

package hbone

import (
	"errors"
	"fmt"
	"io"

	"golang.org/x/net/http2"
)

// Flood protection. A peer can make a connection cost us without sending
// anything useful in two ways, and each is bounded:
//
//   - Frames we owe: every PING and SETTINGS wants an acknowledgement,
//     and some frames want a RST_STREAM. The reader queues them for the
//     writers (it never writes itself), so a peer that sends them and does
//     not read would grow the queue without end. The queue holds at most
//     connConfig.maxControl frames (queueControl), as x/net's server
//     (maxQueuedControlFrames) and Envoy (max_outbound_control_frames) do.
//   - Frames that carry nothing: WINDOW_UPDATE, PRIORITY, SETTINGS,
//     RST_STREAM, acknowledgements nobody asked for, frames of unknown
//     types, DATA for streams already closed, HEADERS we refuse, and empty
//     DATA, HEADERS and CONTINUATION frames (CVE-2019-9518). Each costs a
//     read and a decode, however fast the peer reads our answers. At most
//     connConfig.maxIdleFrames of them may come in a row; DATA with payload
//     for an open stream, a new stream and DATA we send start the count
//     again. PINGs are not counted: keepalives may be all a quiet
//     connection carries (their acknowledgements are bounded above).
//
// Beyond either bound the connection ends with GOAWAY ENHANCE_YOUR_CALM
// (sent as far as the peer reads; a peer that does not read gets none) and
// the Server reports ReasonFlood.

// errFlood marks a connection ended because its peer flooded it.
var errFlood = errors.New("hbone: peer flooded the connection")

// setFloodLocked records why the connection ends and replaces the frames
// owed with the GOAWAY. The caller holds cmu.
func (c *conn) setFloodLocked(err error) {
	if c.flood != nil {
		return
	}
	c.flood = err
	c.control = append(c.control[:0], controlFrame{typ: http2.FrameGoAway, val: uint32(http2.ErrCodeEnhanceYourCalm)})
}

// flooded returns why the connection is ending for a flood, or nil.
func (c *conn) flooded() error {
	c.cmu.Lock()
	defer c.cmu.Unlock()
	return c.flood
}

// endFlood ends a flooded connection: the GOAWAY goes out as far as the
// peer takes it within lastWriteTimeout, then the connection closes.
func (c *conn) endFlood(err error) error {
	c.cmu.Lock()
	c.setFloodLocked(err)
	err = c.flood
	c.cmu.Unlock()
	c.lastWrite()
	err = fmt.Errorf("hbone: %v: %w", http2.ErrCodeEnhanceYourCalm, err)
	c.fail(err)
	return err
}

// idleFrame counts a frame that carried nothing for us. It returns a
// flood error once too many came in a row.
func (c *conn) idleFrame() error {
	if n := c.idleFrames.Add(1); n > c.cfg.maxIdleFrames {
		err := fmt.Errorf("%w: more than %d frames in a row that carry nothing", errFlood, c.cfg.maxIdleFrames)
		c.cmu.Lock()
		c.setFloodLocked(err)
		c.cmu.Unlock()
		return err
	}
	return nil
}

// busy records a useful frame, either way: the count of idle frames starts
// again.
func (c *conn) busy() {
	if c.idleFrames.Load() != 0 {
		c.idleFrames.Store(0)
	}
}

// frameMeter sits between the connection's buffered reader and the
// Framer and reads the header of each frame as the Framer takes it, to
// count empty DATA, HEADERS and CONTINUATION frames: the Framer gathers a
// header block's CONTINUATION frames itself, so a peer could otherwise
// send empty CONTINUATION frames for ever without a frame reaching us.
// Once the count is over the limit, reads fail with the flood error.
type frameMeter struct {
	r    io.Reader
	c    *conn
	hdr  [frameHeaderLen]byte
	nhdr int    // bytes of the current frame header seen
	left uint32 // bytes of the current frame's payload not seen yet
	err  error
}

func (m *frameMeter) Read(p []byte) (int, error) {
	if m.err != nil {
		return 0, m.err
	}
	n, err := m.r.Read(p)
	m.scan(p[:n])
	return n, err
}

// scan follows the frames in b, which continues what it saw before.
func (m *frameMeter) scan(b []byte) {
	for len(b) > 0 {
		if m.left > 0 {
			k := min(uint32(len(b)), m.left)
			m.left -= k
			b = b[k:]
			continue
		}
		k := copy(m.hdr[m.nhdr:], b)
		m.nhdr += k
		b = b[k:]
		if m.nhdr < frameHeaderLen {
			return
		}
		m.nhdr = 0
		m.left = uint32(m.hdr[0])<<16 | uint32(m.hdr[1])<<8 | uint32(m.hdr[2])
		if m.left > 0 || m.err != nil {
			continue
		}
		typ, flags := http2.FrameType(m.hdr[3]), http2.Flags(m.hdr[4])
		empty := typ == http2.FrameContinuation ||
			(typ == http2.FrameData || typ == http2.FrameHeaders) && !flags.Has(http2.FlagDataEndStream)
		if empty {
			m.err = m.c.idleFrame()
		}
	}
}

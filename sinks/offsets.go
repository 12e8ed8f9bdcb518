package sinks

import (
	"context"
	"fmt"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// offsetRange returns, per partition of topic, the first offset at or after
// sinceMilli and the end offset.
func offsetRange(ctx context.Context, cl *kgo.Client, topic string, sinceMilli int64) (starts, ends map[int32]int64, err error) {
	adm := kadm.NewClient(cl)
	endRes, err := adm.ListEndOffsets(ctx, topic)
	if err != nil {
		return nil, nil, fmt.Errorf("end offsets of %s: %w", topic, err)
	}
	startRes, err := adm.ListOffsetsAfterMilli(ctx, sinceMilli, topic)
	if err != nil {
		return nil, nil, fmt.Errorf("offsets of %s: %w", topic, err)
	}
	starts, ends = map[int32]int64{}, map[int32]int64{}
	endRes.Each(func(o kadm.ListedOffset) { ends[o.Partition] = o.Offset })
	startRes.Each(func(o kadm.ListedOffset) { starts[o.Partition] = o.Offset })
	if err := endRes.Error(); err != nil {
		return nil, nil, err
	}
	return starts, ends, nil
}

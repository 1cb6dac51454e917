//! Record compression for produced batches and decompression of fetched ones, through the
//! `kafka-protocol` crate's codecs (Kafka's framing of each: xerial snappy blocks, LZ4
//! frames, gzip, zstd). LZ4 is compressed here at level 1: the crate's level 4 is LZ4HC,
//! about ten times slower, which would make the load generator the bottleneck;
//! librdkafka's default is the fast mode too. gzip (level 6) and zstd (level 3) use the
//! crate's levels, which are Kafka's and librdkafka's defaults.

use anyhow::Context;
use kafka_protocol::compression::{Compressor, Decompressor, Gzip, Lz4, Snappy, Zstd};
use sluice_engine::batch::Compression;

/// `--compression`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CompressionArg {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl CompressionArg {
    pub fn compression(self) -> Compression {
        match self {
            CompressionArg::None => Compression::None,
            CompressionArg::Gzip => Compression::Gzip,
            CompressionArg::Snappy => Compression::Snappy,
            CompressionArg::Lz4 => Compression::Lz4,
            CompressionArg::Zstd => Compression::Zstd,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            CompressionArg::None => "none",
            CompressionArg::Gzip => "gzip",
            CompressionArg::Snappy => "snappy",
            CompressionArg::Lz4 => "lz4",
            CompressionArg::Zstd => "zstd",
        }
    }
}

/// Appends the compressed form of `records` to `out`.
pub fn compress(compression: Compression, records: &[u8], out: &mut Vec<u8>) -> anyhow::Result<()> {
    let fill = |buf: &mut bytes::BytesMut| {
        buf.extend_from_slice(records);
        Ok(())
    };
    match compression {
        Compression::None => {
            out.extend_from_slice(records);
            Ok(())
        }
        Compression::Gzip => Gzip::compress(out, fill),
        Compression::Snappy => Snappy::compress(out, fill),
        Compression::Lz4 => lz4_fast(records, out),
        Compression::Zstd => Zstd::compress(out, fill),
        Compression::Unknown(id) => anyhow::bail!("unknown compression codec {id}"),
    }
    .with_context(|| format!("compressing with {compression:?}"))
}

/// An LZ4 frame (independent blocks, no checksums but the frame's own) at the fast level.
fn lz4_fast(records: &[u8], out: &mut Vec<u8>) -> anyhow::Result<()> {
    let mut encoder = lz4::EncoderBuilder::new()
        .level(1)
        .block_mode(lz4::BlockMode::Independent)
        .build(out)
        .context("starting an LZ4 frame")?;
    std::io::Write::write_all(&mut encoder, records).context("LZ4")?;
    let (_, result) = encoder.finish();
    result.context("finishing an LZ4 frame")
}

/// Replaces `out` with the decompressed form of `data`.
pub fn decompress(compression: Compression, data: &[u8], out: &mut Vec<u8>) -> anyhow::Result<()> {
    out.clear();
    let mut input = data;
    let take = |bytes: &mut bytes::Bytes| {
        out.extend_from_slice(bytes);
        Ok(())
    };
    match compression {
        Compression::None => {
            out.extend_from_slice(data);
            Ok(())
        }
        Compression::Gzip => Gzip::decompress(&mut input, take),
        Compression::Snappy => Snappy::decompress(&mut input, take),
        Compression::Lz4 => Lz4::decompress(&mut input, take),
        Compression::Zstd => Zstd::decompress(&mut input, take),
        Compression::Unknown(id) => anyhow::bail!("unknown compression codec {id}"),
    }
    .with_context(|| format!("decompressing a {compression:?} batch"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn every_codec_round_trips() {
        let records: Vec<u8> = (0..100_000u32).map(|i| (i % 7 + i / 1000) as u8).collect();
        for codec in [
            CompressionArg::None,
            CompressionArg::Gzip,
            CompressionArg::Snappy,
            CompressionArg::Lz4,
            CompressionArg::Zstd,
        ] {
            let mut compressed = vec![1, 2, 3];
            compress(codec.compression(), &records, &mut compressed).unwrap();
            assert_eq!(compressed[..3], [1, 2, 3], "{codec:?} appends");
            if codec != CompressionArg::None {
                assert!(compressed.len() < records.len() / 2, "{codec:?} compresses");
            }
            let mut restored = vec![9; 10];
            decompress(codec.compression(), &compressed[3..], &mut restored).unwrap();
            assert_eq!(restored, records, "{codec:?}");
        }
    }
}

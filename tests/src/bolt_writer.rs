//! Writes a bbolt file with one top-level bucket, for tests that need
//! upstream Terway's ResRelation.db with their own pods in it. The layout is
//! the simplest valid one (two meta pages, an empty freelist, the root
//! bucket's leaf, one leaf with every pair, overflowing as it needs); the
//! reader itself is tested against files the real bbolt wrote
//! (statestore/tests/bolt.rs), and this output passed bbolt's own `Tx.Check`.

const PAGE: usize = 4096;
const MAGIC: u32 = 0xED0C_DAED;

/// `pairs` need not be sorted.
pub fn write(path: &std::path::Path, bucket: &[u8], pairs: &[(Vec<u8>, Vec<u8>)]) -> std::io::Result<()> {
    let mut pairs = pairs.to_vec();
    pairs.sort();
    let leaf = leaf_page(
        4,
        &pairs
            .iter()
            .map(|(k, v)| (0, k.as_slice(), v.as_slice()))
            .collect::<Vec<_>>(),
    );
    let leaf_pages = leaf.len() / PAGE;
    // the bucket's header: its root page (4) and sequence 0
    let header = [4u64.to_le_bytes(), 0u64.to_le_bytes()].concat();
    let root = leaf_page(3, &[(1, bucket, header.as_slice())]);
    let high_water = 4 + leaf_pages as u64;
    let mut file = [meta_page(0, 0, high_water), meta_page(1, 1, high_water)].concat();
    file.extend(page_header(2, 0x10, 0, 0));
    file.resize(3 * PAGE, 0);
    file.extend(root);
    file.extend(leaf);
    std::fs::write(path, file)
}

fn page_header(id: u64, flags: u16, count: u16, overflow: u32) -> Vec<u8> {
    [
        &id.to_le_bytes()[..],
        &flags.to_le_bytes(),
        &count.to_le_bytes(),
        &overflow.to_le_bytes(),
    ]
    .concat()
}

fn meta_page(id: u64, txid: u64, high_water: u64) -> Vec<u8> {
    let mut meta = Vec::new();
    meta.extend(MAGIC.to_le_bytes());
    meta.extend(2u32.to_le_bytes()); // version
    meta.extend((PAGE as u32).to_le_bytes());
    meta.extend(0u32.to_le_bytes()); // flags
    meta.extend(3u64.to_le_bytes()); // root bucket's page
    meta.extend(0u64.to_le_bytes()); // its sequence
    meta.extend(2u64.to_le_bytes()); // freelist page
    meta.extend(high_water.to_le_bytes());
    meta.extend(txid.to_le_bytes());
    let sum = meta.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    meta.extend(sum.to_le_bytes());
    let mut page = page_header(id, 0x04, 0, 0);
    page.extend(meta);
    page.resize(PAGE, 0);
    page
}

/// A leaf page of (flags, key, value) elements, padded to whole pages.
fn leaf_page(id: u64, elements: &[(u32, &[u8], &[u8])]) -> Vec<u8> {
    let data_start = 16 + 16 * elements.len();
    let size: usize = data_start + elements.iter().map(|(_, k, v)| k.len() + v.len()).sum::<usize>();
    let pages = size.div_ceil(PAGE);
    let mut page = page_header(id, 0x02, elements.len() as u16, (pages - 1) as u32);
    let mut data = Vec::new();
    for (i, (flags, k, v)) in elements.iter().enumerate() {
        let element_at = 16 + 16 * i;
        let pos = data_start + data.len() - element_at;
        for field in [*flags, pos as u32, k.len() as u32, v.len() as u32] {
            page.extend(field.to_le_bytes());
        }
        data.extend_from_slice(k);
        data.extend_from_slice(v);
    }
    page.extend(data);
    page.resize(pages * PAGE, 0);
    page
}

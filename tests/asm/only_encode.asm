bits 32
%include "encode.inc"
